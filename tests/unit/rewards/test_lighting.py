"""Lighting metric: exact formula of docs/benchmark.md §3 checked on images with hand-computable statistics."""
import math

import numpy as np
import pytest
from PIL import Image

from common.rewards.lighting import LightingScorer, lighting_score, lighting_terms, srgb_to_lab


def flat(rgb, size=512):
    return Image.new("RGB", (size, size), tuple(rgb))


def grey_L(v: int) -> float:
    """CIE L* of the sRGB grey (v, v, v), written out independently of the module."""
    c = v / 255
    y = c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    return 116 * y ** (1 / 3) - 16 if y > (6 / 29) ** 3 else 116 * (y / (3 * (6 / 29) ** 2) + 4 / 29) - 16


def test_lab_matches_published_values():
    # Published CIELAB (D65) of the sRGB primaries and white.
    published = {(255, 0, 0): (53.2408, 80.0925, 67.2032), (0, 255, 0): (87.7347, -86.1827, 83.1793),
                 (0, 0, 255): (32.2970, 79.1875, -107.8602), (255, 255, 255): (100.0, 0.0, 0.0)}
    for rgb, lab in published.items():
        got = srgb_to_lab(np.array(rgb, dtype=np.uint8))
        assert np.allclose(got, lab, atol=0.02), (rgb, got)
    grey = srgb_to_lab(np.array([[119, 119, 119]], dtype=np.uint8))[0]
    assert grey[1] == pytest.approx(0, abs=1e-9) and grey[2] == pytest.approx(0, abs=1e-9)
    assert grey[0] == pytest.approx(grey_L(119), abs=1e-9)
    with pytest.raises(ValueError, match="channel"):
        srgb_to_lab(np.zeros((4, 4)))


def test_identical_images_score_100():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    assert lighting_score(img, img.copy()) == pytest.approx(100.0, abs=1e-9)
    assert lighting_score(flat((0, 0, 0)), flat((0, 0, 0))) == pytest.approx(100.0)
    assert lighting_score(flat((10, 200, 30), 64), flat((10, 200, 30), 700)) == pytest.approx(100.0)


def test_two_flat_greys_differ_in_luminance_and_shadow_only():
    # Greys 100 and 160: a = b = 0, zero contrast, constant grids, disjoint grey bins (25 vs 40).
    t = lighting_terms(flat((100,) * 3), flat((160,) * 3))
    lum = 1 - abs(grey_L(100) - grey_L(160)) / 50
    assert t["luminance"] == pytest.approx(lum, abs=1e-9)
    assert t["contrast"] == 1.0 and t["color_temp"] == pytest.approx(1.0) and t["light_dist"] == 1.0
    assert t["shadow"] == pytest.approx(0.0, abs=1e-9)
    assert t["score"] == pytest.approx(100 * (0.2 * lum + 0.15 + 0.2 + 0.25), abs=1e-9)
    # Same grey bin (100 // 4 == 103 // 4): the shadow term is 1, only luminance differs.
    t = lighting_terms(flat((100,) * 3), flat((103,) * 3))
    assert t["shadow"] == pytest.approx(1.0)
    lum = 1 - abs(grey_L(100) - grey_L(103)) / 50
    assert t["score"] == pytest.approx(100 * (0.2 * lum + 0.8), abs=1e-9)


def test_red_vs_blue_flat_uses_published_lab():
    # Red (53.2408, 80.0925, 67.2032) vs blue (32.2970, 79.1875, -107.8602): |Δab| > 50 -> colour term 0;
    # grey 76 vs 29 -> different bins -> shadow 0.
    t = lighting_terms(flat((255, 0, 0)), flat((0, 0, 255)))
    lum = 1 - (53.2408 - 32.2970) / 50
    assert t["luminance"] == pytest.approx(lum, abs=1e-3)
    assert t["color_temp"] == 0.0 and t["shadow"] == pytest.approx(0.0, abs=1e-9)
    assert t["score"] == pytest.approx(100 * (0.2 * lum + 0.15 + 0.25), abs=0.02)


def test_small_colour_shift_gives_colour_term():
    # Neutral grey vs the same grey tinted: colour term = 1 - |Δ(a, b)| / 50, computed from the LAB values.
    a, b = flat((128, 128, 128)), flat((140, 128, 120))
    lab = srgb_to_lab(np.array([[140, 128, 120]], dtype=np.uint8))[0]
    t = lighting_terms(a, b)
    assert t["color_temp"] == pytest.approx(1 - math.hypot(lab[1], lab[2]) / 50, abs=1e-9)
    assert 0 < t["color_temp"] < 1


def columns(values, mirror=False):
    """512x512 grey image whose three column bands (0..171, 171..341, 341..512) have the given values."""
    arr = np.zeros((512, 512, 3), dtype=np.uint8)
    for (x0, x1), v in zip([(0, 171), (171, 341), (341, 512)], values):
        arr[:, x0:x1] = v
    return Image.fromarray(arr[:, ::-1].copy() if mirror else arr)


def test_mirrored_light_changes_only_light_distribution():
    vals = (200, 120, 40)
    t = lighting_terms(columns(vals), columns(vals, mirror=True))
    # Mirroring keeps every histogram / mean / percentile; only the 3x3 grid is reversed.
    for k in ("luminance", "contrast", "color_temp", "shadow"):
        assert t[k] == pytest.approx(1.0, abs=1e-9), k
    x = np.array([grey_L(v) for v in vals] * 3)
    y = np.array([grey_L(v) for v in vals[::-1]] * 3)
    r = np.corrcoef(x, y)[0, 1]
    assert t["light_dist"] == pytest.approx((r + 1) / 2, abs=1e-9)
    assert t["score"] == pytest.approx(100 * (0.75 + 0.25 * (r + 1) / 2), abs=1e-9)


def test_contrast_term_on_two_level_image():
    # Half the pixels at grey 60, half at 200: p5 = L(60), p95 = L(200) exactly (linear interpolation
    # inside each half). Against a flat grey the contrast ratio difference is the whole ratio.
    arr = np.full((512, 512, 3), 60, dtype=np.uint8)
    arr[:, 256:] = 200
    lo, hi = grey_L(60), grey_L(200)
    c = (hi - lo) / (hi + lo)
    t = lighting_terms(Image.fromarray(arr), flat((128,) * 3))
    assert t["contrast"] == pytest.approx(max(0.0, 1 - 2 * c), abs=1e-9)
    arr2 = np.full((512, 512, 3), 80, dtype=np.uint8)
    arr2[:, 256:] = 200
    lo2 = grey_L(80)
    c2 = (hi - lo2) / (hi + lo2)
    t2 = lighting_terms(Image.fromarray(arr), Image.fromarray(arr2))
    assert t2["contrast"] == pytest.approx(1 - 2 * abs(c - c2), abs=1e-9)


def test_shadow_term_matches_opencv_bhattacharyya():
    # Image A: half in grey bin 10 (v=40), half in bin 50 (v=200). B: all in bin 10.
    # OpenCV: d = sqrt(1 - sum sqrt(h1 h2) / sqrt(mean1 mean2 N^2)) with N = 64 bins;
    # only bin 10 overlaps: sum sqrt(h1 h2) = sqrt(n/2 * n), mean1 = mean2 = n / 64.
    n = 512 * 512
    arr = np.full((512, 512, 3), 40, dtype=np.uint8)
    arr[256:] = 200
    t = lighting_terms(Image.fromarray(arr), flat((40,) * 3))
    bc = math.sqrt((n / 2) * n) / math.sqrt((n / 64) * (n / 64) * 64 ** 2)
    assert t["shadow"] == pytest.approx(1 - math.sqrt(1 - bc), abs=1e-9)


def test_all_terms_floored_and_scorer_batches():
    t = lighting_terms(flat((0, 0, 0)), flat((255, 255, 255)))
    assert all(0.0 <= t[k] <= 1.0 for k in ("luminance", "contrast", "color_temp", "light_dist", "shadow"))
    assert t["luminance"] == 0.0
    out = LightingScorer().score([flat((1, 2, 3), 32), flat((9, 9, 9), 32)], [flat((1, 2, 3), 32), None])
    assert out[0] == pytest.approx(100.0) and out[1] is None
    with pytest.raises(ValueError, match="references"):
        LightingScorer().score([flat((1, 2, 3))], [])
    with pytest.raises(TypeError, match="PIL"):
        lighting_score(np.zeros((4, 4, 3)), flat((0, 0, 0)))
