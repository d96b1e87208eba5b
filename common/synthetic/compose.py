"""Render a :class:`CaseSpec` into reference images and its ground-truth target.

Target = lighting(style(background with the subjects pasted at their slots, the posed one
rotated/elongated)). The same pipeline without subjects gives the *backdrop* (what each slot
would show were its subject missing), which the placement metric uses as the "empty" answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.synthetic.scenes import (apply_lighting, apply_style, render_background,
                                     render_lighting_reference, render_style_swatch)
from common.synthetic.spec import SLOTS, CaseSpec
from common.synthetic.subjects import NEUTRAL, render_skeleton, render_subject_reference, subject_layer

__all__ = ["Rendered", "slot_box", "render_case", "render_target", "reference_name"]


@dataclass
class Rendered:
    """references: ``(role, (R, R, 3) float32, name)`` in prompt order; target/backdrop (S, S, 3);
    masks: one (S, S) bool per subject (``spec.subjects`` order)."""
    references: list[tuple[str, np.ndarray, str]]
    target: np.ndarray
    backdrop: np.ndarray
    masks: list[np.ndarray]


def slot_box(slot: str, size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` of a 3×3 slot (exclusive ends)."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; expected one of {', '.join(SLOTS)}")
    r, c = divmod(SLOTS.index(slot), 3)
    e = [round(i * size / 3) for i in range(4)]
    return e[c], e[r], e[c + 1], e[r + 1]


def reference_name(spec: CaseSpec, role: str, k: int) -> str:
    """File stem of a reference, following OmniRef-Bench: subject name, "background", "reference",
    "lighting_reference", and for a pose the posed subject's name with underscores."""
    if role == "subject":
        return spec.subjects[k].name
    if role == "pose":
        return spec.subjects[spec.pose.subject].name.replace(" ", "_")
    return {"background": "background", "style": "reference", "lighting": "lighting_reference"}[role]


def _finish(img: np.ndarray, spec: CaseSpec) -> np.ndarray:
    if spec.style is not None:
        img = apply_style(img, spec.style)
    if spec.lighting is not None:
        img = apply_lighting(img, spec.lighting)
    return np.clip(img, 0.0, 1.0)


def render_target(spec: CaseSpec, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(target, backdrop, masks) at ``size``; see :class:`Rendered`."""
    if size < 9:
        raise ValueError(f"target size must be at least 9 px (3 px per slot), got {size}")
    if spec.background is not None:
        base = render_background(spec.background, size)
    else:
        base = np.empty((size, size, 3), np.float32)
        base[:] = NEUTRAL
    canvas = base.copy()
    masks = []
    for i, s in enumerate(spec.subjects):
        x0, y0, x1, y1 = slot_box(s.slot, size)
        tilt = spec.pose.tilt if spec.pose is not None and spec.pose.subject == i else None
        m, rgb = subject_layer(s, (x0, y0, x1, y1), tilt)
        canvas[y0:y1, x0:x1][m] = rgb[m]
        full = np.zeros((size, size), bool)
        full[y0:y1, x0:x1] = m
        masks.append(full)
    return _finish(canvas, spec), _finish(base, spec), masks


def render_case(spec: CaseSpec, size: int, ref_size: int) -> Rendered:
    """All images of a case: references at ``ref_size``, target at ``size``."""
    if ref_size < 8:
        raise ValueError(f"reference size must be at least 8 px, got {ref_size}")
    refs = []
    for role, k in spec.order:
        if role == "subject":
            img = render_subject_reference(spec.subjects[k], ref_size)
        elif role == "background":
            img = render_background(spec.background, ref_size)
        elif role == "style":
            img = render_style_swatch(spec.style, ref_size)
        elif role == "lighting":
            img = render_lighting_reference(spec.lighting, ref_size)
        elif role == "pose":
            img = render_skeleton(spec.pose.tilt, ref_size)
        else:
            raise ValueError(f"unknown reference role {role!r} in case spec")
        refs.append((role, img, reference_name(spec, role, k)))
    target, backdrop, masks = render_target(spec, size)
    return Rendered(references=refs, target=target, backdrop=backdrop, masks=masks)
