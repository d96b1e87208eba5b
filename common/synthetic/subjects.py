"""Procedural subjects and pose skeletons (pure numpy).

A subject is a shape × a saturated colour × an optional texture, named in words ("a red striped
circle") so prompts can mention it. Shapes are implicit functions of local coordinates ``(u, v)``
(``v`` points up, unit = the shape's radius), so the same code draws the subject reference, the
subject in its target slot, and the subject in a pose (rotated and elongated along the pose's body
axis). A pose is a body-axis tilt; its reference is an OpenPose-like stick figure leaning by that
tilt. All arrays are float32 ``(H, W, 3)`` in ``[0, 1]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "SHAPES", "COLOURS", "TEXTURES", "POSE_TILTS", "POSE_STRETCH", "NEUTRAL", "SubjectSpec",
    "subject_layer", "render_subject_reference", "render_skeleton",
]

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "semicircle")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12), "orange": (0.96, 0.52, 0.08), "yellow": (0.95, 0.86, 0.10),
    "green": (0.12, 0.72, 0.20), "cyan": (0.10, 0.80, 0.86), "blue": (0.14, 0.28, 0.92),
    "purple": (0.55, 0.18, 0.80), "magenta": (0.92, 0.18, 0.70), "white": (0.95, 0.95, 0.95),
}
TEXTURES = ("plain", "striped", "dotted")
# tilts in degrees, clockwise from upright; all distinct modulo 180 so that even a symmetric
# shape (an ellipse once elongated) looks different under every pose, and none is 0 (upright)
POSE_TILTS = (-60.0, -40.0, -20.0, 20.0, 40.0, 60.0, 90.0)
POSE_STRETCH = 0.6          # a posed subject is this narrow across its body axis (1.0 along it)
NEUTRAL = (0.12, 0.12, 0.12)  # the dark backdrop of subject references and of scenes without a background
_SHADE = 0.45               # texture marks are the subject colour times this
_RADIUS = 0.4               # shape radius as a fraction of its box side


@dataclass(frozen=True)
class SubjectSpec:
    """One subject and the 3×3 slot it goes to in the target."""
    shape: str
    colour: str
    texture: str
    slot: str

    @property
    def name(self) -> str:
        """Words for prompts and file names, e.g. ``"an orange dotted ring"``."""
        words = [self.colour] + ([] if self.texture == "plain" else [self.texture]) + [self.shape]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article] + words)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        return (v >= -0.75) & (v <= 0.95 - 1.75 * au)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.25)
    if shape == "star":
        # five straight-ish spikes: radius follows a triangle wave of the angle (tip pointing up)
        frac = (np.arctan2(u, v) * (5.0 / (2.0 * np.pi)) + 0.5) % 1.0
        return np.sqrt(u * u + v * v) <= 0.42 + 0.58 * np.abs(2.0 * frac - 1.0) ** 1.5
    if shape == "semicircle":
        return (u * u + (v + 0.4) ** 2 <= 1.0) & (v >= -0.4)
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _texture_shade(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray | float:
    if texture == "plain":
        return 1.0
    if texture == "striped":   # bands across the body axis, so a pose turns them too
        return np.where(np.floor((v + 4.0) * 2.5) % 2 == 0, 1.0, _SHADE)
    if texture == "dotted":
        fu, fv = u * 2.5 - np.round(u * 2.5), v * 2.5 - np.round(v * 2.5)
        return np.where(fu * fu + fv * fv < 0.09, _SHADE, 1.0)
    raise ValueError(f"unknown texture {texture!r}; expected one of {', '.join(TEXTURES)}")


def subject_layer(subject: SubjectSpec, box: tuple[int, int, int, int], tilt: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The subject drawn inside ``box = (x0, y0, x1, y1)`` (pixels, exclusive ends).

    Returns ``mask`` (h, w) bool and ``rgb`` (h, w, 3) float32 for the box region, h = y1 - y0.
    ``tilt`` (degrees, clockwise) applies a pose: local frame rotated by the tilt and the shape
    squeezed to ``POSE_STRETCH`` across the axis: u = (dx cosθ − dy sinθ)/s, v = dx sinθ + dy cosθ.
    """
    x0, y0, x1, y1 = box
    return _layer(subject.shape, subject.colour, subject.texture, x1 - x0, y1 - y0, tilt)


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    # cached results are shared between cases: make them read-only so no caller can corrupt them
    for a in arrays:
        a.setflags(write=False)
    return arrays


@lru_cache(maxsize=8192)  # a subject's look depends only on these; boxes come in few sizes
def _layer(shape: str, colour: str, texture: str, w: int, h: int, tilt: float | None
           ) -> tuple[np.ndarray, np.ndarray]:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {', '.join(COLOURS)}")
    r = _RADIUS * min(w, h)
    dx = ((np.arange(w, dtype=np.float32) + 0.5) - w / 2)[None, :] / r
    dy = (h / 2 - (np.arange(h, dtype=np.float32) + 0.5))[:, None] / r
    if tilt is None:
        u, v = np.broadcast_to(dx, (h, w)), np.broadcast_to(dy, (h, w))
    else:
        t = np.deg2rad(tilt)
        u = (dx * np.cos(t) - dy * np.sin(t)) / POSE_STRETCH
        v = dx * np.sin(t) + dy * np.cos(t)
    mask = _shape_mask(shape, u, v)
    shade = _texture_shade(texture, u, v)
    rgb = (np.asarray(COLOURS[colour], np.float32)[None, None, :]
           * np.asarray(shade, np.float32)[..., None] * np.ones((h, w, 1), np.float32))
    return _frozen(mask, rgb)


def render_subject_reference(subject: SubjectSpec, size: int) -> np.ndarray:
    """Subject reference: the subject alone, upright, centred on the dark neutral backdrop.
    (size, size, 3), read-only (cached)."""
    return _subject_reference(subject.shape, subject.colour, subject.texture, size)


@lru_cache(maxsize=1024)
def _subject_reference(shape: str, colour: str, texture: str, size: int) -> np.ndarray:
    subject = SubjectSpec(shape, colour, texture, "center")
    img = np.empty((size, size, 3), np.float32)
    img[:] = NEUTRAL
    mask, rgb = subject_layer(subject, (0, 0, size, size))
    img[mask] = rgb[mask]
    return _frozen(img)[0]


# stick figure in an up-pointing frame (unit = half the image side); (joint a, joint b, limb colour)
_JOINTS = {"pelvis": (0.0, -0.15), "neck": (0.0, 0.38), "head": (0.0, 0.58),
           "l_elbow": (-0.22, 0.22), "l_hand": (-0.36, 0.02), "r_elbow": (0.22, 0.22),
           "r_hand": (0.36, 0.02), "l_knee": (-0.13, -0.48), "l_foot": (-0.18, -0.85),
           "r_knee": (0.13, -0.48), "r_foot": (0.18, -0.85)}
_LIMBS = (("pelvis", "neck", (1.0, 0.0, 0.0)), ("neck", "head", (1.0, 0.33, 0.0)),
          ("neck", "l_elbow", (1.0, 0.67, 0.0)), ("l_elbow", "l_hand", (1.0, 1.0, 0.0)),
          ("neck", "r_elbow", (0.67, 1.0, 0.0)), ("r_elbow", "r_hand", (0.0, 1.0, 0.0)),
          ("pelvis", "l_knee", (0.0, 1.0, 0.67)), ("l_knee", "l_foot", (0.0, 0.67, 1.0)),
          ("pelvis", "r_knee", (0.0, 0.33, 1.0)), ("r_knee", "r_foot", (0.33, 0.0, 1.0)))


@lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


@lru_cache(maxsize=256)
def render_skeleton(tilt: float, size: int) -> np.ndarray:
    """Pose reference: an OpenPose-style stick figure on black whose body axis leans ``tilt``
    degrees clockwise (the same rotation :func:`subject_layer` applies). (size, size, 3), read-only."""
    t = np.deg2rad(tilt)
    half = size / 2.0
    pts = {}
    for k, (x, y) in _JOINTS.items():  # rotate clockwise: (0, 1) -> (sin t, cos t)
        xr, yr = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
        pts[k] = np.array([half + 0.9 * half * xr, half - 0.9 * half * yr], np.float32)
    gx, gy = _pixel_grid(size)
    img = np.zeros((size, size, 3), np.float32)
    width = max(0.8, 0.035 * size)
    for a, b, colour in _LIMBS:
        pa, pb = pts[a], pts[b]
        d = pb - pa
        s = np.clip(((gx - pa[0]) * d[0] + (gy - pa[1]) * d[1]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        dist2 = (gx - pa[0] - s * d[0]) ** 2 + (gy - pa[1] - s * d[1]) ** 2
        img[dist2 <= width * width] = colour
    hx, hy = pts["head"]
    img[(gx - hx) ** 2 + (gy - hy) ** 2 <= (0.11 * size) ** 2] = (1.0, 0.0, 0.33)
    return _frozen(img)[0]
