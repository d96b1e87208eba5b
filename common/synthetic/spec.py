"""What a synthetic case *is*: a small JSON-able spec from which every image is rendered.

The spec is the single source of truth: the renderer turns it into references and a target, the
metrics rebuild subject masks from it, and the writers store it beside each record so a split read
back from disk can be scored without the generator's memory. ``sample_spec`` draws one from a
numpy Generator, so a case is a pure function of ``(seed, split name, index)``.
"""
from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass

import numpy as np

from common.roles import Role
from common.synthetic.prompts import build_prompt
from common.synthetic.scenes import (BACKGROUND_KINDS, LIGHT_DIRECTIONS, STYLE_PATTERNS, STYLE_TINTS,
                                     BackgroundSpec, LightingSpec, StyleSpec)
from common.synthetic.subjects import COLOURS, POSE_TILTS, SHAPES, TEXTURES, SubjectSpec

__all__ = [
    "SLOTS", "SLOT_LAYOUTS", "layout_slots", "CATEGORIES", "CATEGORY_ROLES", "MAX_REFS", "PoseSpec", "CaseSpec", "min_refs",
    "sample_spec", "fingerprint",
]

SLOTS = ("top left", "top center", "top right", "center left", "center", "center right",
         "bottom left", "bottom center", "bottom right")
# Which of the 3×3 slots a split draws from. The geometry is always the 3×3 grid (compose.slot_box);
# a layout only narrows the choice, so every box, metric and reward stays as it is. "corners" is the
# easier task of docs/learning.md §5: four well-separated places and four slot words to bind.
SLOT_LAYOUTS: dict[str, tuple[str, ...]] = {
    "grid": SLOTS,
    "corners": ("top left", "top right", "bottom left", "bottom right"),
}


def layout_slots(layout: str) -> tuple[str, ...]:
    """The slots of a named layout; an unknown name is an error that lists the known ones."""
    try:
        return SLOT_LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown slot layout {layout!r}; expected one of {', '.join(SLOT_LAYOUTS)}") from None
# OmniRef-Bench categories -> the non-subject roles each adds (one reference each; pose = one
# skeleton for one of the subjects, as in every pose case of the benchmark)
CATEGORY_ROLES: dict[str, tuple[Role, ...]] = {
    "subject": (), "subject_bg": ("background",), "subject_style": ("style",),
    "subject_pose": ("pose",), "subject_bg_style": ("background", "style"),
    "subject_lighting": ("lighting",), "subject_pose_bg": ("pose", "background"),
    "subject_pose_style": ("pose", "style"), "subject_pose_lighting": ("pose", "lighting"),
    "subject_pose_bg_style": ("pose", "background", "style"),
}
CATEGORIES = tuple(CATEGORY_ROLES)
MAX_REFS = 8
_TEXTURE_DRAW = (TEXTURES[0], TEXTURES[0], TEXTURES[1], TEXTURES[2])  # half plain, a quarter each textured
_LIGHT_TEMPS = ("warm", "cool", "golden", "dusk")   # "neutral" left out: every lighting ref tints


@dataclass(frozen=True)
class PoseSpec:
    subject: int            # which subject (index into CaseSpec.subjects) adopts the pose
    tilt: float             # body-axis tilt, degrees clockwise


@dataclass(frozen=True)
class CaseSpec:
    """A whole case. ``order[i] = (role, k)`` is reference image ``i + 1``: k indexes
    ``subjects`` for subject refs and is 0 for the single background/style/lighting/pose ref."""
    category: str
    subjects: tuple[SubjectSpec, ...]
    background: BackgroundSpec | None
    style: StyleSpec | None
    lighting: LightingSpec | None
    pose: PoseSpec | None
    order: tuple[tuple[str, int], ...]
    prompt: str

    @property
    def n_refs(self) -> int:
        return len(self.order)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CaseSpec":
        try:
            def opt(kls, v):
                if v is None:
                    return None
                return kls(**{k: (tuple(x) if isinstance(x, list) else x) for k, x in v.items()})
            return cls(category=d["category"], subjects=tuple(SubjectSpec(**s) for s in d["subjects"]),
                       background=opt(BackgroundSpec, d["background"]), style=opt(StyleSpec, d["style"]),
                       lighting=opt(LightingSpec, d["lighting"]), pose=opt(PoseSpec, d["pose"]),
                       order=tuple((str(r), int(k)) for r, k in d["order"]), prompt=d["prompt"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed synthetic case spec: {e}") from None


def min_refs(category: str) -> int:
    """Fewest references a category can have: one subject plus one per extra role."""
    if category not in CATEGORY_ROLES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    return 1 + len(CATEGORY_ROLES[category])


def fingerprint(spec: CaseSpec) -> str:
    """Content key (what is drawn, not how the prompt words it) used to keep test cases out of train."""
    d = spec.to_dict()
    d.pop("prompt"), d.pop("order")
    return json.dumps(d, sort_keys=True)


def _muted(rng: np.random.Generator) -> tuple[float, float, float]:
    # muted colours keep saturated subjects readable on any background
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.55), rng.uniform(0.3, 0.7))
    return (round(r, 4), round(g, 4), round(b, 4))


def sample_spec(rng: np.random.Generator, category: str, n_refs: int, layout: str = "grid") -> CaseSpec:
    """Draw a case of ``category`` with exactly ``n_refs`` references (1..8), its subjects at distinct
    slots of ``layout`` (:data:`SLOT_LAYOUTS`)."""
    slot_names = layout_slots(layout)
    extras = CATEGORY_ROLES.get(category)
    if extras is None:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if not min_refs(category) <= n_refs <= MAX_REFS:
        raise ValueError(f"category {category!r} needs {min_refs(category)}..{MAX_REFS} references, got {n_refs}")
    k = n_refs - len(extras)
    if k > len(slot_names):
        raise ValueError(f"{k} subjects do not fit the {len(slot_names)} slots of layout {layout!r}")
    colours = rng.choice(list(COLOURS), size=k, replace=False)   # distinct: colour identifies the subject
    slots = rng.choice(len(slot_names), size=k, replace=False)
    subjects = tuple(SubjectSpec(shape=SHAPES[rng.integers(len(SHAPES))], colour=str(c),
                                 texture=_TEXTURE_DRAW[rng.integers(4)], slot=slot_names[s])
                     for c, s in zip(colours, slots))
    background = style = lighting = pose = None
    if "background" in extras:
        background = BackgroundSpec(kind=BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))],
                                    colour_a=_muted(rng), colour_b=_muted(rng),
                                    angle=float(rng.integers(8) * 45), horizon=round(float(rng.uniform(0.4, 0.7)), 3),
                                    tiles=int(rng.integers(2, 4)))
    if "style" in extras:
        style = StyleSpec(tint=list(STYLE_TINTS)[rng.integers(len(STYLE_TINTS))],
                          strength=round(float(rng.uniform(0.3, 0.45)), 3),
                          pattern=STYLE_PATTERNS[rng.integers(len(STYLE_PATTERNS))],
                          angle=float(rng.integers(4) * 45), cycles=float(rng.integers(3, 7)),
                          seed=int(rng.integers(2**31)))
    if "lighting" in extras:
        lighting = LightingSpec(direction=list(LIGHT_DIRECTIONS)[rng.integers(len(LIGHT_DIRECTIONS))],
                                temperature=_LIGHT_TEMPS[rng.integers(len(_LIGHT_TEMPS))],
                                gain=round(float(rng.uniform(0.35, 0.55)), 3))
    if "pose" in extras:
        pose = PoseSpec(subject=int(rng.integers(k)), tilt=float(POSE_TILTS[rng.integers(len(POSE_TILTS))]))
    entries = [("subject", i) for i in range(k)] + [(role, 0) for role in extras]
    order = tuple(entries[i] for i in rng.permutation(len(entries)))
    prompt = build_prompt(rng, subjects, order, pose_subject=None if pose is None else pose.subject)
    return CaseSpec(category=category, subjects=subjects, background=background, style=style,
                    lighting=lighting, pose=pose, order=order, prompt=prompt)
