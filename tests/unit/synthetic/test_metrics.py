"""placement_accuracy, background_error and chance levels."""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from common.synthetic import (background_error, case_from_spec, chance_levels, make_split, placement,
                              placement_accuracy, slot_box)
from common.synthetic.spec import SLOTS


def _cases(n=200, seed=21, size=32):
    return make_split("test", n, seed=seed, size=size)


def test_ground_truth_scores_one_and_zero_background_error():
    for c in _cases():
        assert placement_accuracy(c.target, c) == 1.0
        assert background_error(c.target, c) == 0.0
        # a generated image at another resolution is resized before scoring
        assert placement_accuracy(c.target.resize((64, 64), Image.Resampling.NEAREST), c) == 1.0


def test_blank_images_score_low():
    cases = _cases()
    for fill in (0, 128, 255):
        blank = Image.new("RGB", (32, 32), (fill,) * 3)
        acc = np.mean([placement_accuracy(blank, c) for c in cases])
        assert acc < 0.1, (fill, acc)
    grey = np.full((32, 32, 3), 0.5, np.float32)
    assert np.mean([background_error(grey, c) for c in cases]) > 0.1


def test_moving_one_subject_costs_exactly_that_subject():
    c = make_split("test", 1, seed=3, size=48, categories=["subject_bg"], count_weights={5: 1})[0]
    spec = c.spec
    free = next(s for s in SLOTS if s not in {x.slot for x in spec.subjects})
    moved = dataclasses.replace(spec, subjects=(dataclasses.replace(spec.subjects[0], slot=free),) + spec.subjects[1:])
    other = case_from_spec(moved, 0, "x", 48, 16)
    k = len(spec.subjects)
    assert placement_accuracy(other.target, c) == (k - 1) / k
    # the moved subject now sits where only background belongs
    assert background_error(other.target, c) > 0.0


def test_placement_ground_truth_fields():
    c = _cases(5)[0]
    target = np.asarray(c.target, np.float32) / 255
    for p, s in zip(placement(c), c.spec.subjects):
        assert p.name == s.name and p.slot == s.slot and p.box == slot_box(s.slot, 32)
        x0, y0, x1, y1 = p.box
        assert p.mask.any() and not p.mask[:y0].any() and not p.mask[:, :x0].any()
        assert np.allclose(p.colour, target[p.mask].mean(0))


def test_chance_levels_are_near_one_in_nine():
    cases = make_split("test", 120, seed=5, size=24, count_weights={1: 1, 4: 1, 8: 1})
    chance = chance_levels(cases, draws=3, seed=0)
    assert set(chance) == {1, 4, 8}
    # right subjects at random slots: about 1/9 of them land on their own slot
    assert all(0.03 < v < 0.25 for v in chance.values()), chance


def test_chance_on_the_corners_layout_is_one_in_four_for_one_subject():
    cases = make_split("test", 60, seed=5, size=24, max_refs=1, categories=["subject"], layout="corners")
    chance = chance_levels(cases, draws=20, seed=0, layout="corners")
    # one subject moved to a random one of 4 corners is right 1 time in 4 (1200 draws: ±0.04 is 3 sigma)
    assert abs(chance[1] - 0.25) < 0.04, chance
