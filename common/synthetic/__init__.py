"""Synthetic multi-reference image generation task, generated in code (numpy + Pillow).

Procedural subjects (shape × colour × texture), backgrounds, styles, lighting and poses are
composed into a ground-truth target according to an OmniRef-style prompt that calls the 1..8
shuffled references by number. It feeds SFT (records), RL (target for similarity rewards,
per-role metadata) and ``dyref bench`` (synthetic benchmark in the OmniRef-Bench layout).

    train, test = make_train_test(2000, 200, seed=0, size=32, max_refs=6)
    write_split(train, "data/synthetic", "train"); write_split(test, "data/synthetic", "test")
    placement_accuracy(generated_image, test[0])
"""
from common.synthetic.cases import (OMNIREF_CATEGORY_WEIGHTS, OMNIREF_COUNT_WEIGHTS, SyntheticCase,
                                    allocate_counts, case_from_spec, make_split, make_train_test)
from common.synthetic.compose import render_case, render_target, slot_box
from common.synthetic.metrics import (Placement, background_error, chance_levels, placement,
                                      placement_accuracy)
from common.synthetic.spec import (CATEGORIES, CATEGORY_ROLES, SLOT_LAYOUTS, SLOTS, CaseSpec, fingerprint,
                                   layout_slots, min_refs, sample_spec)
from common.synthetic.writers import SplitFiles, case_paths, load_split, write_split

__all__ = [
    "SyntheticCase", "make_split", "make_train_test", "case_from_spec", "allocate_counts",
    "OMNIREF_CATEGORY_WEIGHTS", "OMNIREF_COUNT_WEIGHTS", "CATEGORIES", "CATEGORY_ROLES", "SLOTS", "SLOT_LAYOUTS", "layout_slots",
    "CaseSpec", "sample_spec", "fingerprint", "min_refs", "render_case", "render_target", "slot_box",
    "Placement", "placement", "placement_accuracy", "background_error", "chance_levels",
    "SplitFiles", "case_paths", "write_split", "load_split",
]
