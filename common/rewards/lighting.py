"""Deterministic lighting-consistency score (OmniRef-Bench, docs/benchmark.md §3). No model.

Both images are resized to 512x512 and compared through LAB and grey statistics:

    score = 100 * (0.2 * luminance + 0.15 * contrast + 0.2 * color_temp + 0.25 * light_dist + 0.2 * shadow)

    luminance  = 1 - |mean(L1) - mean(L2)| / 50
    contrast   = 1 - 2 * |c1 - c2|,          c = (p95(L) - p5(L)) / (p95(L) + p5(L))
    color_temp = 1 - ||(mean(a1), mean(b1)) - (mean(a2), mean(b2))|| / 50
    light_dist = (pearson(g1, g2) + 1) / 2,  g = 3x3 grid of mean L, normalised to sum 1
    shadow     = 1 - bhattacharyya(h1, h2),  h = 64-bin histogram of the 8-bit grey image

each term floored at 0 (so the score is in [0, 100]; identical images give exactly 100).

Choices where the reference text is ambiguous (each one documented so it can be audited):
- Resize: Pillow BILINEAR to 512x512 (no-op when already 512x512). Pillow's bilinear filter
  antialiases when shrinking, unlike cv2.INTER_LINEAR; flat regions are unaffected.
- sRGB -> CIELAB: exact IEC 61966-2-1 decoding, the sRGB->XYZ matrix, D65 white taken as the
  matrix applied to RGB white (so neutral greys have a = b = 0 exactly), CIE f(t) with
  delta = 6/29. L in [0, 100], a/b unscaled (not OpenCV's 8-bit offsets). float64 throughout.
- Percentiles: numpy's default linear interpolation. If p95 + p5 == 0 (black image) c = 0.
- Grid: cell boundaries round(k * 512 / 3) = 0, 171, 341, 512 (mirror-symmetric), brightness =
  mean L per cell, normalised by the grid sum (an all-black grid stays all zeros). Pearson is
  scale-invariant, so the normalisation only matters for the constant case below.
- Pearson of constant grids: if both grids are constant they are the same normalised (uniform)
  distribution, correlation := 1; if exactly one is constant, correlation := 0 (no evidence).
- Grey: ITU-R BT.601 luma round(0.299 R + 0.587 G + 0.114 B) on 8-bit RGB (what
  cv2.COLOR_RGB2GRAY computes up to its fixed-point rounding); 64 bins over [0, 256) = width 4.
- Bhattacharyya: OpenCV HISTCMP_BHATTACHARYYA on raw counts,
  d = sqrt(max(0, 1 - sum(sqrt(h1 * h2)) / sqrt(mean(h1) * mean(h2) * N^2))), N = 64 bins.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = [
    "LIGHTING_SIZE", "LIGHTING_WEIGHTS", "srgb_to_lab", "lighting_terms", "lighting_score", "LightingScorer",
]

LIGHTING_SIZE = 512
LIGHTING_WEIGHTS = {"luminance": 0.2, "contrast": 0.15, "color_temp": 0.2, "light_dist": 0.25, "shadow": 0.2}

# IEC 61966-2-1 sRGB (linear) -> CIE XYZ, D65.
_M_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                           [0.2126729, 0.7151522, 0.0721750],
                           [0.0193339, 0.1191920, 0.9503041]], dtype=np.float64)
_WHITE_D65 = _M_SRGB_TO_XYZ.sum(axis=1)          # XYZ of RGB (1, 1, 1): (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Exact sRGB -> CIELAB (D65). rgb: uint8 [..., 3] (0..255) or float [..., 3] in [0, 1].

    Returns float64 [..., 3]: L in [0, 100], a and b unscaled.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"srgb_to_lab expects a trailing channel axis of 3, got shape {rgb.shape}")
    c = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _M_SRGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > _DELTA ** 3, np.cbrt(xyz), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def _prepare(img: Image.Image) -> np.ndarray:
    if not isinstance(img, Image.Image):
        raise TypeError(f"lighting expects PIL images, got {type(img).__name__}")
    img = img.convert("RGB")
    if img.size != (LIGHTING_SIZE, LIGHTING_SIZE):
        img = img.resize((LIGHTING_SIZE, LIGHTING_SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)                                  # [512, 512, 3]


def _contrast_ratio(L: np.ndarray) -> float:
    p5, p95 = np.percentile(L, [5, 95])
    return 0.0 if p95 + p5 == 0 else float((p95 - p5) / (p95 + p5))


def _grid(L: np.ndarray) -> np.ndarray:
    """3x3 mean-L grid normalised to sum 1. L: [H, W] -> [9]."""
    h, w = L.shape
    ys = [round(k * h / 3) for k in range(4)]
    xs = [round(k * w / 3) for k in range(4)]
    g = np.array([L[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for i in range(3) for j in range(3)])
    s = g.sum()
    return g / s if s > 0 else g


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    nx, ny = math.sqrt(float((dx * dx).sum())), math.sqrt(float((dy * dy).sum()))
    const_x, const_y = nx <= 1e-12 * max(1.0, abs(float(x.mean()))), ny <= 1e-12 * max(1.0, abs(float(y.mean())))
    if const_x and const_y:
        return 1.0
    if const_x or const_y:
        return 0.0
    return float(np.clip((dx * dy).sum() / (nx * ny), -1.0, 1.0))


def _grey_hist(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    grey = np.clip(np.round(0.299 * r + 0.587 * g + 0.114 * b), 0, 255).astype(np.int64)
    return np.bincount((grey // 4).ravel(), minlength=64).astype(np.float64)   # 64 bins of width 4


def _bhattacharyya(h1: np.ndarray, h2: np.ndarray) -> float:
    """OpenCV HISTCMP_BHATTACHARYYA on raw (unnormalised) histograms."""
    n = h1.size
    denom = math.sqrt(h1.mean() * h2.mean() * n * n)
    if denom == 0:
        return 1.0
    return math.sqrt(max(0.0, 1.0 - float(np.sqrt(h1 * h2).sum()) / denom))


def lighting_terms(generated: Image.Image, reference: Image.Image) -> dict[str, float]:
    """The five floored terms (each in [0, 1]) plus "score" (0..100) for one image pair."""
    rgb1, rgb2 = _prepare(generated), _prepare(reference)
    lab1, lab2 = srgb_to_lab(rgb1), srgb_to_lab(rgb2)
    L1, L2 = lab1[..., 0], lab2[..., 0]
    terms = {
        "luminance": 1.0 - abs(L1.mean() - L2.mean()) / 50.0,
        "contrast": 1.0 - 2.0 * abs(_contrast_ratio(L1) - _contrast_ratio(L2)),
        "color_temp": 1.0 - math.hypot(lab1[..., 1].mean() - lab2[..., 1].mean(),
                                       lab1[..., 2].mean() - lab2[..., 2].mean()) / 50.0,
        "light_dist": (_pearson(_grid(L1), _grid(L2)) + 1.0) / 2.0,
        "shadow": 1.0 - _bhattacharyya(_grey_hist(rgb1), _grey_hist(rgb2)),
    }
    terms = {k: max(0.0, float(v)) for k, v in terms.items()}
    terms["score"] = 100.0 * sum(LIGHTING_WEIGHTS[k] * terms[k] for k in LIGHTING_WEIGHTS)
    return terms


def lighting_score(generated: Image.Image, reference: Image.Image) -> float:
    """score = 100 * sum_k w_k * term_k, in [0, 100] (docs/benchmark.md §3)."""
    return lighting_terms(generated, reference)["score"]


class LightingScorer:
    """Batch wrapper: raw 0..100 lighting score per sample, None where there is no lighting reference."""

    def score(self, generated: list[Image.Image], references: list[Image.Image | None]) -> list[float | None]:
        if len(generated) != len(references):
            raise ValueError(f"LightingScorer.score: {len(generated)} generated images but {len(references)} references")
        return [None if ref is None else lighting_score(gen, ref) for gen, ref in zip(generated, references)]
