"""Scores of a generated image against a synthetic case's ground truth.

docs/measurements.md §8: pixel MSE barely separates models on this task (a constant grey image already
scores low), colour-at-position does. So the main metric asks, per placed subject, whether the
generated image shows *that subject's colour* where the subject belongs:

    g_i = mean of the generated image over subject i's ground-truth mask
    e_j = mean of the ground-truth target over subject j's mask     (every subject j)
    b_i = mean of the backdrop (the target without subjects) over mask i   ("nothing here")
    τ_i = ½ · min(min_{j≠i} ‖e_i − e_j‖, ‖e_i − b_i‖)       (half the gap to the nearest rival)
    c_i = mean of the target over the pixels of mask i at least 0.7× as bright as its brightest
          (the subject's body colour, without its darker texture marks)
    spill_i = (#pixels outside i's slot within r_i = min(τ_i, 0.15) of c_i in the generated image
               − the same count in the target) / #pixels of mask i within r_i of c_i in the target
               (how many copies of i's body colour appear elsewhere)
    hit_i = ‖g_i − e_i‖ ≤ τ_i  and  spill_i < ½
    placement_accuracy = mean_i hit_i

The spill condition is what keeps a flooded image from counting as placed: a model rewarded only
for what is inside each subject's slot learns to paint every subject's colour everywhere
(docs/learning.md); such an image shows the colours but not the composition.

The mask mean is the subject's "dominant colour" including its texture and the style/lighting
applied to it; the ground truth therefore scores exactly 1. The margin τ_i (rather than "nearest
of the candidates") matters: with few candidates a flat grey image is often nearer the right
colour than the wrong ones and scored 0.33 that way; with the margin it scores ≈ 0.03. Chance is measured, not assumed:
:func:`chance_levels` scores the right subjects rendered at random slots.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.synthetic.cases import SyntheticCase
from common.synthetic.compose import render_target, slot_box
from common.synthetic.spec import layout_slots

__all__ = ["Placement", "placement", "placement_hits", "placement_accuracy", "background_error", "chance_levels",
           "as_array"]


@dataclass(frozen=True)
class Placement:
    """Ground truth for one placed subject: ``box`` is its slot (x0, y0, x1, y1) in target pixels,
    ``colour`` its mean RGB in the target (0..1), ``empty`` the backdrop's mean RGB under its mask."""
    name: str
    slot: str
    box: tuple[int, int, int, int]
    colour: tuple[float, float, float]
    empty: tuple[float, float, float]
    mask: np.ndarray


def as_array(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """PIL image or (H, W, 3) uint8/float array -> float32 (size, size, 3) in [0, 1] (BOX resize)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"generated image array must be (H, W, 3), got shape {image.shape}")
        image = Image.fromarray(image if image.dtype == np.uint8 else
                                (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if not isinstance(image, Image.Image):
        raise TypeError(f"generated image must be a PIL image or numpy array, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, np.float32) / 255.0


def placement(case: SyntheticCase) -> list[Placement]:
    """Per subject (``case.spec.subjects`` order): slot box, expected colour and mask."""
    target = np.asarray(case.target, np.float32) / 255.0
    backdrop, masks = case.layers()
    out = []
    for s, m in zip(case.spec.subjects, masks):
        out.append(Placement(name=s.name, slot=s.slot, box=slot_box(s.slot, case.size),
                             colour=tuple(float(x) for x in target[m].mean(0)),
                             empty=tuple(float(x) for x in backdrop[m].mean(0)), mask=m))
    return out


def placement_hits(generated: Image.Image | np.ndarray, case: SyntheticCase) -> list[bool]:
    """Per placed subject (spec order): its slot shows its colour and its colour is not spilled
    elsewhere (module docstring)."""
    gen = as_array(generated, case.size)
    target = np.asarray(case.target, np.float32) / 255.0
    places = placement(case)
    expected = np.array([p.colour for p in places])                     # (k, 3)
    hits = []
    for i, p in enumerate(places):
        rivals = np.vstack([np.delete(expected, i, axis=0), np.asarray(p.empty)[None]])
        tau = 0.5 * np.linalg.norm(rivals - expected[i], axis=1).min()
        inside = bool(np.linalg.norm(gen[p.mask].mean(0) - expected[i]) <= tau)
        px = target[p.mask]
        lum = px.mean(-1)
        body = px[lum >= 0.7 * lum.max()].mean(0)
        x0, y0, x1, y1 = p.box
        outside = np.ones(gen.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        r = min(tau, 0.15)
        near = lambda img: int((np.linalg.norm(img[outside] - body, axis=-1) <= r).sum())  # noqa: E731
        own_body = int((np.linalg.norm(px - body, axis=-1) <= r).sum())   # the body's pixels in the target
        spill = (near(gen) - near(target)) / max(own_body, 1)
        hits.append(inside and spill < 0.5)
    return hits


def placement_accuracy(generated: Image.Image | np.ndarray, case: SyntheticCase) -> float:
    """Fraction of placed subjects whose slot shows their colour, with no copy of it elsewhere
    (module docstring). In [0, 1]."""
    hits = placement_hits(generated, case)
    return sum(hits) / len(hits)


def background_error(generated: Image.Image | np.ndarray, case: SyntheticCase) -> float:
    """Mean absolute error (0..1 per channel) against the target outside every subject's slot
    box, i.e. over pixels only the background/style/lighting references determine."""
    gen = as_array(generated, case.size)
    target = np.asarray(case.target, np.float32) / 255.0
    keep = np.ones((case.size, case.size), bool)
    for s in case.spec.subjects:   # whole slot boxes out: a slightly misdrawn subject is not a background error
        x0, y0, x1, y1 = slot_box(s.slot, case.size)
        keep[y0:y1, x0:x1] = False
    if not keep.any():
        return 0.0
    return float(np.abs(gen[keep] - target[keep]).mean())


def chance_levels(cases: Iterable[SyntheticCase], draws: int = 4, seed: int = 0,
                  layout: str = "grid") -> dict[int, float]:
    """Placement accuracy of "the right subjects at random slots" of ``layout``, mean per reference count.

    Each draw re-renders the case's target with its subjects moved to random distinct slots
    (everything else kept) and scores it against the real case.
    """
    slot_names = layout_slots(layout)
    rng = np.random.default_rng(seed)
    scores: dict[int, list[float]] = defaultdict(list)
    for case in cases:
        for _ in range(draws):
            slots = rng.choice(len(slot_names), size=len(case.spec.subjects), replace=False)
            moved = dataclasses.replace(case.spec, subjects=tuple(
                dataclasses.replace(s, slot=slot_names[j]) for s, j in zip(case.spec.subjects, slots)))
            target, _, _ = render_target(moved, case.size)
            scores[case.n_refs].append(placement_accuracy(target, case))
    return {n: float(np.mean(v)) for n, v in sorted(scores.items())}
