"""Synthetic multi-reference cases and splits with the OmniRef-Bench structure.

``make_split`` is deterministic in ``(name, n_cases, seed, ...)``: case ``i`` is drawn from
``numpy.random.default_rng([seed, crc32(name), i, attempt])``, so it does not depend on the other
cases. Reference counts are allocated exactly (largest remainder over ``count_weights``), then
shuffled; each case's category is drawn among those that fit its count, weighted like the benchmark.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from common.synthetic.compose import render_case, render_target, slot_box
from common.synthetic.spec import CATEGORIES, MAX_REFS, CaseSpec, fingerprint, min_refs, sample_spec

__all__ = [
    "SyntheticCase", "OMNIREF_CATEGORY_WEIGHTS", "OMNIREF_COUNT_WEIGHTS", "allocate_counts",
    "case_from_spec", "make_split", "make_train_test", "to_pil",
]

# OmniRef-Bench (skeleton metadata, docs/benchmark.md §2): cases per category and per reference count
OMNIREF_CATEGORY_WEIGHTS = {"subject": 50, "subject_bg": 51, "subject_style": 50, "subject_pose": 45,
                            "subject_bg_style": 40, "subject_lighting": 40, "subject_pose_bg": 30,
                            "subject_pose_style": 30, "subject_pose_lighting": 30,
                            "subject_pose_bg_style": 30}
OMNIREF_COUNT_WEIGHTS = {2: 26, 3: 50, 4: 90, 5: 100, 6: 95, 7: 35}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MAX_ATTEMPTS = 64


def to_pil(a: np.ndarray) -> Image.Image:
    """float (H, W, 3) in [0, 1] -> RGB PIL image (rounded to the nearest uint8)."""
    h, w = a.shape[:2]
    # frombytes: half the cost of fromarray at these sizes, and this runs ~6 times per case
    return Image.frombytes("RGB", (w, h), (a * 255.0 + 0.5).clip(0.0, 255.0).astype(np.uint8).tobytes())


@dataclass
class SyntheticCase:
    """One case. references: ``(role, image, name)`` in the order the prompt numbers them
    (reference image ``i + 1`` is ``references[i]``); ``metadata`` is JSON-able (subject names,
    slots, the posed subject, sizes); ``spec`` regenerates everything."""
    index: int
    category: str
    prompt: str
    references: list[tuple[str, Image.Image, str]]
    target: Image.Image
    spec: CaseSpec
    case_id: str
    metadata: dict
    _backdrop: np.ndarray | None = field(default=None, repr=False)
    _masks: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_refs(self) -> int:
        return len(self.references)

    @property
    def size(self) -> int:
        return self.target.size[0]

    def reference_boxes(self) -> list[tuple[float, float, float, float] | None]:
        """Per reference (prompt order), where its content belongs in the target as (x0, y0, x1, y1)
        fractions: a subject's slot box, the posed subject's box for a pose; None for the others."""
        def frac(k: int) -> tuple[float, float, float, float]:
            x0, y0, x1, y1 = slot_box(self.spec.subjects[k].slot, self.size)
            return (x0 / self.size, y0 / self.size, x1 / self.size, y1 / self.size)
        out = []
        for role, k in self.spec.order:
            if role == "subject":
                out.append(frac(k))
            elif role == "pose":
                out.append(frac(self.spec.pose.subject))
            else:
                out.append(None)
        return out

    def training_case(self):
        """This case as the learner's :class:`~services.learner.tasks.TrainingCase` fields."""
        return dict(prompt=self.prompt, references=list(self.references), target=self.target, index=self.index,
                    boxes=self.reference_boxes())

    def layers(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """(backdrop (S, S, 3) float quantised like the target, subject masks (S, S) bool), from the spec."""
        if self._masks is None:
            _, backdrop, masks = render_target(self.spec, self.size)
            self._backdrop = np.asarray(to_pil(backdrop), np.float32) / 255.0
            self._masks = masks
        return self._backdrop, self._masks


def _metadata(spec: CaseSpec, size: int, ref_size: int) -> dict:
    return {"subjects": [s.name for s in spec.subjects], "slots": [s.slot for s in spec.subjects],
            "pose_subject": None if spec.pose is None else spec.subjects[spec.pose.subject].name,
            "roles": [r for r, _ in spec.order], "size": size, "ref_size": ref_size}


def case_from_spec(spec: CaseSpec, index: int, case_id: str, size: int, ref_size: int) -> SyntheticCase:
    """Render a spec into a :class:`SyntheticCase`."""
    r = render_case(spec, size, ref_size)
    case = SyntheticCase(index=index, category=spec.category, prompt=spec.prompt,
                         references=[(role, to_pil(img), name) for role, img, name in r.references],
                         target=to_pil(r.target), spec=spec, case_id=case_id,
                         metadata=_metadata(spec, size, ref_size))
    case._backdrop = np.asarray(to_pil(r.backdrop), np.float32) / 255.0
    case._masks = r.masks
    return case


def allocate_counts(n_cases: int, weights: Mapping[int, float]) -> list[int]:
    """Exactly ``n_cases`` reference counts in proportion to ``weights`` (largest remainder), sorted."""
    keys = sorted(weights)
    w = np.array([weights[k] for k in keys], float)
    quota = n_cases * w / w.sum()
    base = np.floor(quota).astype(int)
    rest = n_cases - int(base.sum())
    for j in np.argsort(-(quota - base), kind="stable")[:rest]:
        base[j] += 1
    return [k for k, b in zip(keys, base) for _ in range(b)]


def _fits(category: str, n_refs: int, max_subjects: int) -> bool:
    """Can a case of ``category`` have ``n_refs`` references with at most ``max_subjects`` subjects?"""
    return min_refs(category) <= n_refs and n_refs - (min_refs(category) - 1) <= max_subjects


def _check_args(name, n_cases, size, ref_size, max_refs, categories, count_weights, max_subjects=MAX_REFS):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"split name {name!r} must be 1-64 characters of letters, digits, '_' or '-'")
    if not isinstance(n_cases, int) or n_cases < 0:
        raise ValueError(f"n_cases must be a non-negative int, got {n_cases!r}")
    if size < 9 or ref_size < 8:
        raise ValueError(f"size must be >= 9 and ref_size >= 8, got size={size}, ref_size={ref_size}")
    if not 1 <= max_refs <= MAX_REFS:
        raise ValueError(f"max_refs must be in 1..{MAX_REFS}, got {max_refs}")
    cats = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown or not cats:
        raise ValueError(f"unknown or no categories {unknown}; expected some of {', '.join(CATEGORIES)}")
    if count_weights is None:
        lo = min(min_refs(c) for c in cats)
        count_weights = {n: 1.0 for n in range(lo, max_refs + 1)}
    bad = [n for n, w in count_weights.items() if not isinstance(n, int) or n < 1 or w < 0]
    if bad:
        raise ValueError(f"count_weights keys must be reference counts >= 1 with weights >= 0; bad: {bad}")
    # counts above max_refs are dropped, so OMNIREF_COUNT_WEIGHTS can be capped by max_refs
    weights = {n: float(w) for n, w in count_weights.items() if n <= max_refs and w > 0}
    if not weights:
        raise ValueError(f"no reference count with positive weight is <= max_refs={max_refs}")
    if max_subjects < 1:
        raise ValueError(f"max_subjects must be >= 1, got {max_subjects}")
    for n in weights:
        if not any(_fits(c, n, max_subjects) for c in cats):
            raise ValueError(f"no category among {cats} can have {n} reference(s) with at most {max_subjects} subject(s)")
    return cats, weights


def make_split(name: str, n_cases: int, seed: int, size: int = 32, ref_size: int | None = None,
               max_refs: int = MAX_REFS, categories: Iterable[str] | None = None,
               count_weights: Mapping[int, float] | None = None,
               exclude: set[str] | None = None, layout: str = "grid",
               max_subjects: int = MAX_REFS) -> list[SyntheticCase]:
    """``n_cases`` cases named ``<name>_<index:05d>``.

    size / ref_size: target / reference side in pixels (ref_size defaults to size).
    categories: allowed OmniRef-Bench categories (default all ten; drawn with the benchmark's weights).
    count_weights: ``{n_refs: weight}`` (default uniform over every feasible count up to max_refs;
    pass ``OMNIREF_COUNT_WEIGHTS`` for the benchmark's distribution). Counts above max_refs are dropped.
    exclude: fingerprints (:func:`fingerprint`) to redraw, e.g. the train split's, for a held-out split.
    layout: which slots subjects are drawn from (:data:`SLOT_LAYOUTS`; the geometry stays 3×3).
    max_subjects: at most this many subject references per case; a count above it is filled with
    the categories' other roles (e.g. 3 references = 2 subjects + a background).
    """
    ref_size = size if ref_size is None else ref_size
    cats, weights = _check_args(name, n_cases, size, ref_size, max_refs, categories, count_weights, max_subjects)
    key = zlib.crc32(name.encode())
    counts = allocate_counts(n_cases, weights)
    counts = [counts[i] for i in np.random.default_rng([seed, key]).permutation(n_cases)]
    cat_w = np.array([OMNIREF_CATEGORY_WEIGHTS[c] for c in cats], float)
    cases = []
    for index, n in enumerate(counts):
        ok = np.array([_fits(c, n, max_subjects) for c in cats])
        p = cat_w * ok / (cat_w * ok).sum()
        for attempt in range(_MAX_ATTEMPTS):
            rng = np.random.default_rng([seed, key, index, attempt])
            spec = sample_spec(rng, cats[rng.choice(len(cats), p=p)], n, layout)
            if not exclude or fingerprint(spec) not in exclude:
                break
        else:
            raise ValueError(f"split {name!r} case {index}: every draw of a {n}-reference case is excluded; "
                             f"too few distinct {n}-reference cases for a held-out split this large")
        cases.append(case_from_spec(spec, index, f"{name}_{index:05d}", size, ref_size))
    return cases


def make_train_test(n_train: int, n_test: int, seed: int, **kwargs) -> tuple[list[SyntheticCase], list[SyntheticCase]]:
    """A train split and a held-out test split: different streams (split names) and no test case
    whose content equals a train case's. ``kwargs`` go to :func:`make_split` for both."""
    train = make_split("train", n_train, seed, **kwargs)
    seen = {fingerprint(c.spec) for c in train}
    return train, make_split("test", n_test, seed, exclude=seen, **kwargs)
