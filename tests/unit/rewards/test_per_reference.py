"""Known-answer tests of the per-reference reward on the synthetic task (docs/learning.md).

Images are built from each case's own spec (the ground truth, subjects swapped, flooded, blank),
so every expectation is known without running a model. τ is the DRS default centre, 0.65; every
s_j is at most 1 (a subject fully present in its box and nowhere else).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.rewards.per_reference import PerReferenceScorer, ReferenceInput
from common.synthetic import make_split, placement_accuracy, render_target, slot_box
from common.synthetic.cases import to_pil
from common.synthetic.spec import SLOTS
from common.synthetic.subjects import COLOURS, subject_layer

TAU = 0.65
CATS = ["subject", "subject_bg", "subject_pose", "subject_pose_bg"]


@pytest.fixture(scope="module")
def cases():
    return [c for c in make_split("rt", 80, 3, size=32, ref_size=16, max_refs=5, categories=CATS)]


@pytest.fixture(scope="module")
def scorer():
    return PerReferenceScorer("looks")


def refs_of(case):
    return [ReferenceInput(role, im, box) for (role, im, _), box in zip(case.references, case.reference_boxes())]


SCORED = ("subject", "background")   # pose references are not scored (no pose estimator)


def score(scorer, case, image: np.ndarray) -> list[float]:
    return scorer.score([to_pil(image)], [refs_of(case)], roles=SCORED)[0]


def subject_columns(case) -> list[int]:
    """Column of each subject (spec order) in the score row (scored references, in order)."""
    order = [(role, k) for role, k in case.spec.order if role in SCORED]
    return [order.index(("subject", s)) for s in range(len(case.spec.subjects))]


def gt(case) -> np.ndarray:
    return np.asarray(case.target, np.float32) / 255.0


def test_ground_truth_scores_every_reference_near_its_maximum(cases, scorer):
    for case in cases:
        row = score(scorer, case, gt(case))
        assert len(row) == sum(role in SCORED for role, _ in case.spec.order)
        for v in row:
            assert v is not None and v >= 0.95 and v > TAU, (case.case_id, row)


def test_swapping_two_subjects_lowers_exactly_those_two(cases, scorer):
    n = 0
    for case in cases:
        subs = case.spec.subjects
        if len(subs) < 2:
            continue
        a, b = 0, 1
        swapped = list(subs)
        swapped[a], swapped[b] = dataclasses.replace(subs[a], slot=subs[b].slot), dataclasses.replace(subs[b], slot=subs[a].slot)
        img, _, _ = render_target(dataclasses.replace(case.spec, subjects=tuple(swapped)), case.size)
        before, after = score(scorer, case, gt(case)), score(scorer, case, img)
        cols = subject_columns(case)
        for i, (x, y) in enumerate(zip(before, after)):
            if i in (cols[a], cols[b]):
                assert y < TAU and y < x, (case.case_id, i, before, after)
            else:
                assert y == pytest.approx(x, abs=1e-6), (case.case_id, i, before, after)
        n += 1
    assert n >= 20


def test_blank_image_scores_every_reference_below_tau(cases, scorer):
    for case in cases:
        # black and white: a mid-grey blank honestly resembles a greyish flat background reference
        for grey in (0.0, 1.0):
            row = score(scorer, case, np.full((case.size, case.size, 3), grey, np.float32))
            assert all(v < TAU for v in row), (case.case_id, grey, row)
        row = score(scorer, case, np.full((case.size, case.size, 3), 0.5, np.float32))
        assert all(row[c] < TAU for c in subject_columns(case)), (case.case_id, row)


def _flood_stripes(case) -> np.ndarray:
    """The ground truth with every pixel outside the subjects' boxes painted in 2-px stripes of the
    subjects' colours: each subject in its place, and its look spread over the rest of the image."""
    img = gt(case).copy()
    keep = np.zeros((case.size, case.size), bool)
    for s in case.spec.subjects:
        x0, y0, x1, y1 = slot_box(s.slot, case.size)
        keep[y0:y1, x0:x1] = True
    colours = [np.asarray(COLOURS[s.colour], np.float32) for s in case.spec.subjects]
    rows = (np.arange(case.size) // 2) % len(colours)
    for y in range(case.size):
        img[y, ~keep[y]] = colours[rows[y]]
    return img


def _flood_copies(case) -> np.ndarray:
    """The ground truth with a copy of the subjects (in turn) drawn in every empty slot."""
    img = gt(case).copy()
    used = {s.slot for s in case.spec.subjects}
    empty = [s for s in SLOTS if s not in used]
    for i, slot in enumerate(empty):
        s = case.spec.subjects[i % len(case.spec.subjects)]
        x0, y0, x1, y1 = slot_box(slot, case.size)
        m, rgb = subject_layer(s, (x0, y0, x1, y1))
        img[y0:y1, x0:x1][m] = rgb[m]
    return img


@pytest.mark.parametrize("flood", [_flood_stripes, _flood_copies])
def test_flooded_image_scores_every_subject_below_tau_and_is_not_placed(cases, scorer, flood):
    n = 0
    for case in cases:
        k = len(case.spec.subjects)
        if flood is _flood_copies and 9 - k < k:
            continue  # too few empty slots to copy every subject once
        img = flood(case)
        row = score(scorer, case, img)
        for c in subject_columns(case):
            assert row[c] < TAU, (case.case_id, flood.__name__, row)
        assert placement_accuracy(img, case) == 0.0, case.case_id
        n += 1
    assert n >= 20


def test_reward_rises_with_each_subject_put_right(cases, scorer):
    for case in cases:
        subs = case.spec.subjects
        means = []
        for m in range(len(subs) + 1):
            pose = case.spec.pose if case.spec.pose is not None and case.spec.pose.subject < m else None
            img, _, _ = render_target(dataclasses.replace(case.spec, subjects=subs[:m], pose=pose), case.size)
            row = score(scorer, case, img)
            means.append(np.mean([row[c] for c in subject_columns(case)]))
        assert all(b > a + 0.5 / len(subs) for a, b in zip(means, means[1:])), (case.case_id, means)


def test_ground_truth_is_placed_and_roles_filter_columns(cases, scorer):
    case = next(c for c in cases if c.category == "subject_bg")
    assert placement_accuracy(gt(case), case) == 1.0
    only_bg = scorer.score([case.target], [refs_of(case)], roles=["background"])[0]
    assert len(only_bg) == 1 and only_bg[0] >= 0.95


def test_a_subject_without_a_box_is_missing_not_zero(scorer):
    case = make_split("nb", 1, 0, size=32, ref_size=16, max_refs=3, categories=["subject"])[0]
    refs = [ReferenceInput(role, im, None) for role, im, _ in case.references]
    assert scorer.score([case.target], [refs])[0] == [None] * case.n_refs
    pose = next(c for c in make_split("nb", 20, 0, size=32, ref_size=16, max_refs=3, categories=["subject_pose"]))
    assert len(scorer.score([pose.target], [refs_of(pose)])[0]) == pose.n_refs - 1  # pose: no column by default


def test_scene_term_scores_the_area_outside_the_subjects_against_the_target(cases, scorer):
    case = next(c for c in cases if c.category == "subject" and len(c.spec.subjects) >= 2)
    refs = refs_of(case)
    assert scorer.scene([case.target], case.target, refs)[0][0] == 1.0
    # subjects swapped: the area outside their boxes is unchanged, so the scene term is too
    subs = case.spec.subjects
    swapped = (dataclasses.replace(subs[0], slot=subs[1].slot), dataclasses.replace(subs[1], slot=subs[0].slot)) + subs[2:]
    img, _, _ = render_target(dataclasses.replace(case.spec, subjects=swapped), case.size)
    assert scorer.scene([to_pil(img)], case.target, refs)[0][0] == 1.0
    # the backdrop brightened: the scene term falls (a case without a background reference too)
    lit = np.clip(gt(case) + 0.25 * (1 - gt(case)), 0, 1)
    assert scorer.scene([to_pil(lit)], case.target, refs)[0][0] < 0.5
