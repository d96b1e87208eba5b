"""Procedural backgrounds, styles and lighting (pure numpy).

Everything is defined on normalised image coordinates, so a reference drawn at ``ref_size`` and
the target drawn at ``size`` show the same background / pattern / light, only at a different
resolution. Arrays are float32 ``(H, W, 3)`` in ``[0, 1]``.

- background: flat colour, linear gradient, horizon scene (sky gradient over ground), big tiles.
- style:   y = (1 − a)·x + a·tint, then darkened by a pattern p ∈ [0, 1]: y ← y·(1 − 0.3·p)
           (stripes, crosshatch, halftone dots or grain). Style reference = a neutral swatch so styled.
- lighting: y = x · (1 + g·d(x, y)) · temperature, d = 2·((X − ½)·lx + (Y − ½)·ly) a ramp rising
           toward the light's side. Lighting reference = a neutral grey room (wall, floor, sphere) so lit.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "BACKGROUND_KINDS", "STYLE_TINTS", "STYLE_PATTERNS", "LIGHT_DIRECTIONS", "TEMPERATURES",
    "BackgroundSpec", "StyleSpec", "LightingSpec", "render_background", "apply_style",
    "apply_lighting", "render_style_swatch", "render_lighting_reference",
]

BACKGROUND_KINDS = ("flat", "gradient", "horizon", "tiles")
STYLE_TINTS: dict[str, tuple[float, float, float]] = {
    "sepia": (0.70, 0.50, 0.30), "teal": (0.15, 0.60, 0.60), "violet": (0.50, 0.35, 0.78),
    "amber": (0.92, 0.66, 0.20), "mint": (0.55, 0.88, 0.65), "rose": (0.92, 0.50, 0.62),
    "slate": (0.38, 0.45, 0.58),
}
STYLE_PATTERNS = ("stripes", "crosshatch", "dots", "grain")
# where the light comes from, as a unit vector in image coordinates (x right, y down)
LIGHT_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "top": (0.0, -1.0), "bottom": (0.0, 1.0),
    "top left": (-0.7071, -0.7071), "top right": (0.7071, -0.7071),
    "bottom left": (-0.7071, 0.7071), "bottom right": (0.7071, 0.7071),
}
TEMPERATURES: dict[str, tuple[float, float, float]] = {
    "warm": (1.12, 0.96, 0.76), "cool": (0.80, 0.95, 1.16), "golden": (1.15, 1.00, 0.62),
    "dusk": (0.98, 0.78, 1.06), "neutral": (1.0, 1.0, 1.0),
}


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    angle: float = 0.0      # gradient direction, degrees
    horizon: float = 0.6    # horizon height (fraction of the image from the top)
    tiles: int = 2          # tiles per side


@dataclass(frozen=True)
class StyleSpec:
    tint: str
    strength: float         # a in y = (1 − a)·x + a·tint
    pattern: str
    angle: float            # stripe direction, degrees
    cycles: float           # pattern frequency, cycles per image side
    seed: int               # grain noise seed


@dataclass(frozen=True)
class LightingSpec:
    direction: str
    temperature: str
    gain: float             # g in 1 + g·d


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates X, Y in (0, 1), each (size, size)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _lerp(a, b, t: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def render_background(bg: BackgroundSpec, size: int) -> np.ndarray:
    """The background at ``size``: (size, size, 3)."""
    X, Y = _grid(size)
    if bg.kind == "flat":
        return np.broadcast_to(np.asarray(bg.colour_a, np.float32), (size, size, 3)).copy()
    if bg.kind == "gradient":
        t = np.deg2rad(bg.angle)
        d = (X - 0.5) * np.cos(t) + (Y - 0.5) * np.sin(t)
        return _lerp(bg.colour_a, bg.colour_b, np.clip(d / 1.4143 + 0.5, 0.0, 1.0))
    if bg.kind == "horizon":
        sky = _lerp(np.asarray(bg.colour_a) * 1.15, bg.colour_a, np.clip(Y / bg.horizon, 0, 1))
        ground = _lerp(bg.colour_b, np.asarray(bg.colour_b) * 0.7, np.clip((Y - bg.horizon) / (1 - bg.horizon), 0, 1))
        return np.clip(np.where((Y < bg.horizon)[..., None], sky, ground), 0.0, 1.0).astype(np.float32)
    if bg.kind == "tiles":
        odd = ((np.floor(X * bg.tiles) + np.floor(Y * bg.tiles)) % 2).astype(bool)
        return np.where(odd[..., None], np.float32(bg.colour_b), np.float32(bg.colour_a)).astype(np.float32)
    raise ValueError(f"unknown background kind {bg.kind!r}; expected one of {', '.join(BACKGROUND_KINDS)}")


def _pattern(style: StyleSpec, size: int) -> np.ndarray:
    X, Y = _grid(size)
    t = np.deg2rad(style.angle)
    f = 2.0 * np.pi * style.cycles
    if style.pattern == "stripes":
        return 0.5 + 0.5 * np.sin(f * (X * np.cos(t) + Y * np.sin(t)))
    if style.pattern == "crosshatch":
        a = 0.5 + 0.5 * np.sin(f * (X * np.cos(t) + Y * np.sin(t)))
        b = 0.5 + 0.5 * np.sin(f * (-X * np.sin(t) + Y * np.cos(t)))
        return np.maximum(a, b)
    if style.pattern == "dots":
        return ((0.5 + 0.5 * np.sin(f * X)) * (0.5 + 0.5 * np.sin(f * Y))) ** 0.5
    if style.pattern == "grain":
        return np.random.default_rng(style.seed).random((size, size), dtype=np.float32)
    raise ValueError(f"unknown style pattern {style.pattern!r}; expected one of {', '.join(STYLE_PATTERNS)}")


def apply_style(img: np.ndarray, style: StyleSpec) -> np.ndarray:
    """y = ((1 − a)·x + a·tint)·(1 − 0.3·p). img (S, S, 3) -> (S, S, 3)."""
    if style.tint not in STYLE_TINTS:
        raise ValueError(f"unknown style tint {style.tint!r}; expected one of {', '.join(STYLE_TINTS)}")
    tint = np.asarray(STYLE_TINTS[style.tint], np.float32)
    y = (1.0 - style.strength) * img + style.strength * tint
    return (y * (1.0 - 0.3 * _pattern(style, img.shape[0]))[..., None]).astype(np.float32)


def apply_lighting(img: np.ndarray, light: LightingSpec) -> np.ndarray:
    """y = clip(x·(1 + g·d)·temperature), d = 2((X − ½)lx + (Y − ½)ly). img (S, S, 3) -> (S, S, 3)."""
    if light.direction not in LIGHT_DIRECTIONS:
        raise ValueError(f"unknown light direction {light.direction!r}; expected one of {', '.join(LIGHT_DIRECTIONS)}")
    if light.temperature not in TEMPERATURES:
        raise ValueError(f"unknown colour temperature {light.temperature!r}; expected one of {', '.join(TEMPERATURES)}")
    X, Y = _grid(img.shape[0])
    lx, ly = LIGHT_DIRECTIONS[light.direction]
    ramp = 1.0 + light.gain * 2.0 * ((X - 0.5) * lx + (Y - 0.5) * ly)
    temp = np.asarray(TEMPERATURES[light.temperature], np.float32)
    return np.clip(img * ramp[..., None] * temp, 0.0, 1.0).astype(np.float32)


def render_style_swatch(style: StyleSpec, size: int) -> np.ndarray:
    """Style reference: a neutral grey swatch (vertical ramp plus a mid-grey disc) so styled."""
    X, Y = _grid(size)
    base = np.repeat((0.35 + 0.4 * Y)[..., None], 3, axis=2)
    base[(X - 0.5) ** 2 + (Y - 0.5) ** 2 < 0.09] = 0.55
    return np.clip(apply_style(base, style), 0.0, 1.0)


def render_lighting_reference(light: LightingSpec, size: int) -> np.ndarray:
    """Lighting reference: a neutral grey room (wall, floor, sphere) so lit."""
    X, Y = _grid(size)
    room = np.where((Y < 0.62)[..., None], np.float32(0.62), np.float32(0.45)) * np.ones((1, 1, 3), np.float32)
    sphere = (X - 0.5) ** 2 + (Y - 0.55) ** 2 < 0.04
    room[sphere] = 0.7
    return apply_lighting(room, light)
