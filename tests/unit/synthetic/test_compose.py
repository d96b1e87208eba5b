"""The target really depends on every reference role, and the references show what they should."""
from __future__ import annotations

import dataclasses

import numpy as np

from common.synthetic import make_split, render_case, render_target, slot_box
from common.synthetic.scenes import BackgroundSpec
from common.synthetic.subjects import COLOURS, NEUTRAL, SubjectSpec


def _case(category, n, seed=0, size=48):
    return make_split("t", 1, seed, size=size, categories=[category], count_weights={n: 1})[0]


def _target(spec, size=48):
    return render_target(spec, size)[0]


def _outside(spec, size=48):
    keep = np.ones((size, size), bool)
    for s in spec.subjects:
        x0, y0, x1, y1 = slot_box(s.slot, size)
        keep[y0:y1, x0:x1] = False
    return keep


def _inside(slot, size=48):
    m = np.zeros((size, size), bool)
    x0, y0, x1, y1 = slot_box(slot, size)
    m[y0:y1, x0:x1] = True
    return m


def test_background_reference_changes_non_subject_pixels_only():
    spec = _case("subject_bg", 3).spec
    other = dataclasses.replace(spec, background=BackgroundSpec("gradient", (0.1, 0.5, 0.2), (0.6, 0.2, 0.4), angle=45.0))
    a, b = _target(spec), _target(other)
    out = _outside(spec)
    assert np.abs(a - b)[out].mean() > 0.05
    r = render_case(spec, 48, 16)
    for m in r.masks:   # subject pixels are pasted over the background: unchanged
        assert np.array_equal(a[m], b[m])
    bg_ref = lambda sp: dict((role, img) for role, img, _ in render_case(sp, 48, 16).references)["background"]
    assert np.abs(bg_ref(spec) - bg_ref(other)).mean() > 0.05


def test_subject_colour_and_slot_drive_their_slot():
    spec = _case("subject", 3, seed=2).spec
    s0 = spec.subjects[0]
    new_colour = next(c for c in COLOURS if c not in {s.colour for s in spec.subjects})
    recoloured = dataclasses.replace(spec, subjects=(dataclasses.replace(s0, colour=new_colour),) + spec.subjects[1:])
    a, b = _target(spec), _target(recoloured)
    diff = np.abs(a - b).sum(-1) > 0
    assert diff.any() and not diff[~_inside(s0.slot)].any()
    free = next(sl for sl in ("top left", "center", "bottom right", "top right") if sl not in {s.slot for s in spec.subjects})
    moved = dataclasses.replace(spec, subjects=(dataclasses.replace(s0, slot=free),) + spec.subjects[1:])
    c = _target(moved)
    assert np.abs(a - c)[_inside(s0.slot)].sum() > 0 and np.abs(a - c)[_inside(free)].sum() > 0


def test_style_changes_the_whole_target():
    spec = _case("subject_style", 3, seed=1).spec
    for change in (dict(tint="teal" if spec.style.tint != "teal" else "rose"),
                   dict(pattern="stripes" if spec.style.pattern != "stripes" else "dots")):
        other = dataclasses.replace(spec, style=dataclasses.replace(spec.style, **change))
        d = np.abs(_target(spec) - _target(other))
        assert d[_outside(spec)].mean() > 0.01, change
    no_style = dataclasses.replace(spec, style=None)
    assert np.abs(_target(spec) - _target(no_style)).mean() > 0.05


def test_lighting_direction_and_temperature_change_the_target():
    spec = _case("subject_lighting", 3, seed=4).spec
    flip = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "top left": "bottom right",
            "bottom right": "top left", "top right": "bottom left", "bottom left": "top right"}
    other_dir = dataclasses.replace(spec, lighting=dataclasses.replace(spec.lighting, direction=flip[spec.lighting.direction]))
    other_temp = dataclasses.replace(spec, lighting=dataclasses.replace(
        spec.lighting, temperature="cool" if spec.lighting.temperature != "cool" else "warm"))
    a = _target(spec)
    assert np.abs(a - _target(other_dir)).mean() > 0.02
    assert np.abs(a - _target(other_temp)).mean() > 0.01
    # the light comes from its named side: that half of the target is brighter
    lit = _target(dataclasses.replace(spec, lighting=dataclasses.replace(spec.lighting, direction="left")))
    assert lit[:, :24].mean() > lit[:, 24:].mean()


def test_pose_changes_only_the_posed_subject():
    spec = _case("subject_pose", 3, seed=5).spec
    posed = spec.subjects[spec.pose.subject]
    tilt = 90.0 if spec.pose.tilt != 90.0 else -40.0
    other = dataclasses.replace(spec, pose=dataclasses.replace(spec.pose, tilt=tilt))
    a, b = _target(spec), _target(other)
    diff = np.abs(a - b).sum(-1) > 0
    assert diff[_inside(posed.slot)].sum() >= 5 and not diff[~_inside(posed.slot)].any()
    unposed = dataclasses.replace(spec, pose=None)
    assert (np.abs(a - _target(unposed)).sum(-1) > 0)[_inside(posed.slot)].any()
    # the skeleton reference follows the tilt too
    ra = dict((r, img) for r, img, _ in render_case(spec, 48, 32).references)["pose"]
    rb = dict((r, img) for r, img, _ in render_case(other, 48, 32).references)["pose"]
    assert np.abs(ra - rb).sum() > 10


def test_references_show_their_content():
    case = _case("subject_pose_bg_style", 6, seed=6, size=32)
    r = render_case(case.spec, 32, 32)
    for (role, img, name), (role2, k) in zip(r.references, case.spec.order):
        assert role == role2
        if role == "subject":
            s: SubjectSpec = case.spec.subjects[k]
            assert name == s.name
            # the subject alone on the neutral backdrop: only its colour, its texture shade, the backdrop
            allowed = {tuple(np.float32(c) for c in NEUTRAL)} | {
                tuple(np.float32(c) * np.float32(f) for c in COLOURS[s.colour]) for f in (1.0, 0.45)}
            seen = {tuple(px) for px in img.reshape(-1, 3)}
            assert seen <= allowed and len(seen) >= 2
        if role == "pose":
            assert name == case.spec.subjects[case.spec.pose.subject].name.replace(" ", "_")
    # the same spec gives the same images
    r2 = render_case(case.spec, 32, 32)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(r.references, r2.references))
