"""Pixel "looks": how much of a reference's appearance a region of a generated image shows.

A deterministic, weight-free scorer for the CPU profile, where a randomly initialised embedder
cannot tell a red circle from a blue one. It compares colours, which is what identifies a subject
on the synthetic task (docs/learning.md); on real data the same per-reference reward uses an
embedding model on crops instead (common.rewards.per_reference).

Notation: images are float arrays (H, W, 3) in [0, 1]; κ(p, q) = clip((r₂ − ‖p − q‖) / (r₂ − r₁), 0, 1),
full credit within r₁ = 0.1 of a colour, none beyond r₂ = 0.2 (a Gaussian's tails, summed over
many merely duller pixels, made phantom matches).

    subject look of a reference F:  backdrop b = median of F's border pixels,
                                    foreground = {p : ‖p − b‖ > δ},
                                    body = foreground pixels at least 0.7× as bright as its brightest
                                    (texture marks are darker shades: a dark-grey dot matches any
                                    dull background, so it does not identify the subject),
                                    palette Q_F = the body's colours, area a_F = |body| / |F|
    matched fraction of a region R: f(R) = mean_{p ∈ R} max_{q ∈ Q_F} κ(p, q)
    presence in a box:              own = min(1, f(R) / (c · a_F))        (c = 0.8: rasterising a
                                    shape at another size changes its area by a few percent)
    presence elsewhere (pixels):    copies = matched pixel count / (c · a_F · |R_own|)

Everything here is pure numpy on small arrays (a 32 px image, a 16 px reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["SubjectLook", "as_float", "subject_look", "match_map", "box_mask", "presence",
           "background_similarity", "LOOK_RADII", "LOOK_DELTA", "AREA_TOLERANCE"]

LOOK_RADII = (0.1, 0.2)  # colour kernel: full match within r1, none beyond r2 (RGB distance in [0, 1] units)
LOOK_DELTA = 0.12      # a reference pixel this far from its backdrop is foreground (δ)
AREA_TOLERANCE = 0.8   # c: a box showing 80 % of the expected area counts as fully present
_MAX_PALETTE = 64


@dataclass(frozen=True)
class SubjectLook:
    """palette [P, 3] float32 (foreground colours, at most 64), area = a_F in (0, 1]."""
    palette: np.ndarray
    area: float


def as_float(image: Image.Image | np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """PIL image or uint8/float array -> float32 (H, W, 3) in [0, 1]; ``size`` = (W, H) BOX-resizes."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array must be (H, W, 3), got {image.shape}")
        arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if size is None or (arr.shape[1], arr.shape[0]) == tuple(size):
            return np.clip(arr, 0.0, 1.0)
        image = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or an array, got {type(image).__name__}")
    image = image.convert("RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BOX)
    return np.asarray(image, np.float32) / 255.0


def subject_look(reference: Image.Image | np.ndarray, delta: float = LOOK_DELTA) -> SubjectLook | None:
    """The look of a subject reference (module docstring); None when it has no foreground."""
    ref = as_float(reference)
    border = np.concatenate([ref[0], ref[-1], ref[1:-1, 0], ref[1:-1, -1]])
    backdrop = np.median(border, axis=0)
    fg = np.linalg.norm(ref - backdrop, axis=-1) > delta
    if not fg.any():
        return None
    lum = ref.mean(-1)
    body = fg & (lum >= 0.7 * lum[fg].max())
    colours = ref[body]
    # a few distinct colours describe a drawn subject; keep the most frequent ones (bounded cost)
    q = np.round(colours * 31).astype(np.int32)
    keys, first, counts = np.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2], return_index=True, return_counts=True)
    keep = first[np.argsort(-counts, kind="stable")[:_MAX_PALETTE]]
    return SubjectLook(palette=colours[keep].astype(np.float32), area=float(body.mean()))


def match_map(image: np.ndarray, look: SubjectLook, radii: tuple[float, float] = LOOK_RADII) -> np.ndarray:
    """max_q κ(p, q) per pixel: (H, W) in [0, 1] — how much each pixel looks like the subject."""
    d = np.sqrt(((image[:, :, None, :] - look.palette[None, None]) ** 2).sum(-1).min(-1))   # (H, W)
    r1, r2 = radii
    return np.clip((r2 - d) / (r2 - r1), 0.0, 1.0).astype(np.float32)


def box_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """(H, W) bool of a box given as (x0, y0, x1, y1) fractions of the image (pixel centres inside)."""
    x0, y0, x1, y1 = box
    xs = (np.arange(width) + 0.5) / width
    ys = (np.arange(height) + 0.5) / height
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def presence(matches: np.ndarray, region: np.ndarray, look: SubjectLook, expected_pixels: float | None = None,
             tolerance: float = AREA_TOLERANCE) -> float:
    """How fully the subject is present in ``region`` (bool (H, W)), in [0, 1].

    Without ``expected_pixels``: as a share of the region (own box: f(R) / (c·a_F)). With it: as a
    count of subject-sized copies anywhere in the region (matched pixels / (c·a_F·expected)), for
    regions of another size than a subject's box (the background outside every box)."""
    n = int(region.sum())
    if n == 0:
        return 0.0
    if expected_pixels is None:
        return float(min(1.0, matches[region].mean() / (tolerance * look.area)))
    # counted pixels are the ones that match (κ ≥ ½): summed over a large area, the soft tails of
    # the kernel on merely darker or duller pixels would add up to a phantom copy
    hits = float((matches[region] >= 0.5).sum())
    return float(min(1.0, hits / (tolerance * look.area * max(expected_pixels, 1.0))))


def _cell_means(image: np.ndarray, keep: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of the kept pixels in each of cells × cells equal parts of the image, and the
    kept share of each cell. Cells are fractions of the image, so two images of different sizes are
    compared over the same areas (no resampling of either)."""
    h, w = keep.shape
    ys = np.minimum((np.arange(h) * cells) // h, cells - 1)
    xs = np.minimum((np.arange(w) * cells) // w, cells - 1)
    cell = (ys[:, None] * cells + xs[None, :]).ravel()
    k = keep.ravel().astype(np.float64)
    n = np.bincount(cell, weights=k, minlength=cells * cells)
    total = np.bincount(cell, minlength=cells * cells)
    means = np.stack([np.bincount(cell, weights=image[..., c].ravel() * k, minlength=cells * cells)
                      for c in range(3)], -1) / np.maximum(n, 1e-9)[:, None]
    return means, n / total


def background_similarity(generated: np.ndarray, reference: np.ndarray, boxes, cells: int = 8,
                          scale: float = 0.2, tolerance: float = 0.035) -> float | None:
    """1 − max(0, MAE − tolerance)/scale (floored at 0) between the generated image and the
    background reference over the area outside every subject box (``boxes``: fractions), both
    averaged over a ``cells`` × ``cells`` grid at their own resolution: a background is
    low-frequency and the reference is drawn at another size. The tolerance absorbs what
    rasterising the same scene at two sizes leaves (≤ 0.032 on the synthetic task's tiles)."""
    def keep_mask(h, w):
        keep = np.ones((h, w), bool)
        for b in boxes:
            keep &= ~box_mask(b, h, w)
        return keep
    ref = as_float(reference)
    g, gw = _cell_means(generated, keep_mask(*generated.shape[:2]), cells)
    r, rw = _cell_means(ref, keep_mask(*ref.shape[:2]), cells)
    # a cell counts where both images keep most of it (a box edge cuts cells differently at each size)
    used = (gw > 0.5) & (rw > 0.5)
    if not used.any():
        return None
    err = float((np.abs(g[used] - r[used]).mean(-1) * gw[used]).sum() / gw[used].sum())
    return max(0.0, 1.0 - max(0.0, err - tolerance) / scale)
