"""OmniRef-Bench case loading: the official metadata json and the training-record jsonl.

Official metadata (docs/benchmark.md §2) is a JSON list of
``{"image"?, "prompt", "edit_image": [...], "index", "category"}`` with paths
``<category>/<n_refs>/<case_id>/<role dir>/<file>``. Training records (§1) are one JSON object
per line with the same ``image``/``prompt``/``edit_image``/``index`` fields and paths
``<n>_subjects/<id>/<role dir>/<file>``.

Records are addressed by their ``index`` field, never by list position: the released evaluator
reads ``metadata[int(file_stem)]`` while the generator names files ``<index>.jpg``, so the last 31
items of the shipped files get the wrong references (docs/benchmark.md §2). :class:`BenchSet` is a
dict keyed by ``index`` and refuses duplicate indices.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

__all__ = [
    "BenchCase", "BenchSet", "BenchDataError", "role_of_path", "parse_record", "load_metadata",
    "load_train_records", "load_cases", "resolve_image", "metadata_stats", "ROLE_DIRS",
]

# directory name (inside the case folder) -> role; pose has two sub-folders
ROLE_DIRS = {"transfer_subjects": "subject", "style": "style", "background": "background",
             "lighting": "lighting"}
_POSE_SUBDIRS = ("skeleton", "reference")


class BenchDataError(ValueError):
    """A metadata record or image path is malformed; the message names the record and field."""


@dataclass(frozen=True)
class BenchCase:
    """One benchmark case.

    references: ordered ``(role, relative path, name)`` triples in ``edit_image`` order; ``name``
    is the file stem (a subject's name, e.g. ``"a wild rabbit"``).
    target: relative path of the ground-truth image, or None (36 of 396 shipped items have none).
    """
    index: int
    category: str
    prompt: str
    references: tuple[tuple[str, str, str], ...]
    target: str | None
    n_refs: int
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def roles(self) -> list[str]:
        return [r for r, _, _ in self.references]

    def refs_of(self, role: str) -> list[tuple[str, str, str]]:
        return [t for t in self.references if t[0] == role]

    def to_json(self) -> dict:
        return {"index": self.index, "category": self.category, "prompt": self.prompt,
                "references": [list(t) for t in self.references], "target": self.target,
                "n_refs": self.n_refs}


def role_of_path(path: str) -> str:
    """Reference role from a metadata path: ``.../transfer_subjects/x.png`` -> ``subject``,
    ``.../pose/skeleton/x.jpg`` or ``.../pose/reference/x.jpg`` -> ``pose``, and so on."""
    parts = PurePosixPath(path).parts[:-1]
    for i, p in enumerate(parts):
        if p == "pose" and i + 1 < len(parts) and parts[i + 1] in _POSE_SUBDIRS:
            return "pose"
        if p in ROLE_DIRS:
            return ROLE_DIRS[p]
    raise BenchDataError(
        f"cannot tell the reference role of {path!r}: expected a folder named one of "
        f"{', '.join(sorted(ROLE_DIRS))} or pose/skeleton, pose/reference")


def _category_from_path(path: str) -> str | None:
    parts = PurePosixPath(path).parts
    # train records live under "<n>_subjects/<id>/..."; metadata under "<category>/<n>/<id>/..."
    if len(parts) >= 4 and parts[1].isdigit():
        return parts[0]
    return None


def parse_record(rec: dict, *, where: str = "record", check_count: bool = True) -> BenchCase:
    """Validate one metadata/train record and turn it into a :class:`BenchCase`.

    check_count: require the ``<n_refs>`` path component to equal ``len(edit_image)`` (true for
    every official metadata item; train records have no such component and skip the check).
    """
    if not isinstance(rec, dict):
        raise BenchDataError(f"{where}: expected an object, got {type(rec).__name__}")
    for key, typ in (("prompt", str), ("edit_image", list), ("index", int)):
        if key not in rec:
            raise BenchDataError(f"{where}: missing field {key!r}")
        if not isinstance(rec[key], typ) or (typ is int and isinstance(rec[key], bool)):
            raise BenchDataError(f"{where}: field {key!r} must be {typ.__name__}, got {type(rec[key]).__name__}")
    where = f"{where} (index {rec['index']})"
    paths = rec["edit_image"]
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise BenchDataError(f"{where}: edit_image must be a non-empty list of paths")
    refs = []
    for p in paths:
        try:
            refs.append((role_of_path(p), p, PurePosixPath(p).stem))
        except BenchDataError as e:
            raise BenchDataError(f"{where}: {e}") from None
    n = len(paths)
    category = rec.get("category")
    if check_count:
        for p in paths:
            parts = PurePosixPath(p).parts
            if len(parts) < 4 or not parts[1].isdigit():
                raise BenchDataError(f"{where}: path {p!r} is not <category>/<n_refs>/<case>/...")
            if int(parts[1]) != n:
                raise BenchDataError(f"{where}: path {p!r} says {parts[1]} references but edit_image has {n}")
    if category is None:
        # train records ("<n>_subjects/<id>/...") carry no category: derive it from the roles
        category = _category_from_path(paths[0]) if check_count else _train_category(refs)
    if not isinstance(category, str) or not category:
        raise BenchDataError(f"{where}: category must be a non-empty string")
    target = rec.get("image")
    if target is not None and not isinstance(target, str):
        raise BenchDataError(f"{where}: image must be a path string or absent")
    extra = {k: v for k, v in rec.items() if k not in ("prompt", "edit_image", "index", "category", "image")}
    return BenchCase(index=rec["index"], category=category, prompt=rec["prompt"],
                     references=tuple(refs), target=target, n_refs=n, extra=extra)


def _train_category(refs: list[tuple[str, str, str]]) -> str:
    # train records carry no category: name it the way the benchmark does (subject[_pose][_bg][_style])
    roles = {r for r, _, _ in refs}
    order = [("pose", "pose"), ("background", "bg"), ("style", "style"), ("lighting", "lighting")]
    return "_".join(["subject"] + [tag for role, tag in order if role in roles])


class BenchSet:
    """Cases keyed by ``index`` (insertion order kept for iteration)."""

    def __init__(self, cases: Iterable[BenchCase], source: str = "<memory>"):
        self.source = source
        self._by_index: dict[int, BenchCase] = {}
        for c in cases:
            if c.index in self._by_index:
                raise BenchDataError(f"{source}: duplicate index {c.index}")
            self._by_index[c.index] = c

    def __getitem__(self, index: int) -> BenchCase:
        try:
            return self._by_index[index]
        except KeyError:
            raise KeyError(f"{self.source}: no case with index {index}") from None

    def __contains__(self, index: object) -> bool:
        return index in self._by_index

    def __iter__(self) -> Iterator[BenchCase]:
        return iter(self._by_index.values())

    def __len__(self) -> int:
        return len(self._by_index)

    def indices(self) -> list[int]:
        return list(self._by_index)

    def subset(self, limit: int | None = None, categories: Iterable[str] | None = None) -> "BenchSet":
        cats = set(categories) if categories else None
        cases = [c for c in self if cats is None or c.category in cats]
        return BenchSet(cases[:limit] if limit is not None else cases, self.source)


def load_metadata(path: str | os.PathLike) -> BenchSet:
    """Load an official metadata json (a list of records) into a :class:`BenchSet`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchDataError(f"metadata file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise BenchDataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise BenchDataError(f"{path}: top level must be a list of records, got {type(data).__name__}")
    return BenchSet((parse_record(r, where=f"{path.name}[{i}]") for i, r in enumerate(data)), str(path))


def load_train_records(path: str | os.PathLike) -> BenchSet:
    """Load a training-record jsonl (docs/benchmark.md §1) into a :class:`BenchSet`."""
    path = Path(path)
    cases = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise BenchDataError(f"training-record file not found: {path}") from None
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchDataError(f"{path}:{ln}: not valid JSON: {e}") from None
        cases.append(parse_record(rec, where=f"{path.name}:{ln}", check_count=False))
    return BenchSet(cases, str(path))


def load_cases(path: str | os.PathLike) -> BenchSet:
    """Load either format, chosen by extension (``.jsonl`` = training records)."""
    return load_train_records(path) if str(path).endswith(".jsonl") else load_metadata(path)


def resolve_image(root: str | os.PathLike, rel: str) -> Path:
    """Absolute path of ``rel`` under ``root``; refuses anything that would escape ``root``.

    Rejected: absolute paths, ``..`` components, and symlinks whose target lies outside the root
    (checked on the fully resolved path). Raises BenchDataError naming the path; FileNotFoundError
    when the file is simply missing.
    """
    if not isinstance(rel, str) or not rel:
        raise BenchDataError(f"image path must be a non-empty string, got {rel!r}")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or os.path.isabs(rel) or (p.parts and ":" in p.parts[0]):
        raise BenchDataError(f"image path {rel!r} is absolute; metadata paths must be relative to the image root")
    if ".." in p.parts:
        raise BenchDataError(f"image path {rel!r} contains '..'; it may not leave the image root")
    root_r = Path(root).resolve()
    full = (root_r / Path(*p.parts)).resolve()
    if not full.is_relative_to(root_r):
        raise BenchDataError(f"image path {rel!r} resolves to {full}, outside the image root {root_r} (symlink?)")
    if not full.is_file():
        raise FileNotFoundError(f"image {rel!r} not found under {root_r}")
    return full


def metadata_stats(cases: Iterable[BenchCase]) -> dict:
    """Counts the shipped files are described by (docs/benchmark.md §2): cases, reference-count
    distribution, categories, per-category reference-count range, reference roles, pose kinds,
    and how many cases have a ground-truth image."""
    cases = list(cases)
    per_cat: dict[str, list[int]] = {}
    roles: Counter = Counter()
    pose_kinds: Counter = Counter()
    for c in cases:
        per_cat.setdefault(c.category, []).append(c.n_refs)
        for role, path, _ in c.references:
            roles[role] += 1
            if role == "pose":
                pose_kinds["skeleton" if "/pose/skeleton/" in f"/{path}" else "reference"] += 1
    return {
        "n_cases": len(cases),
        "by_n_refs": dict(sorted(Counter(c.n_refs for c in cases).items())),
        "by_category": dict(sorted(((k, len(v)) for k, v in per_cat.items()), key=lambda kv: (-kv[1], kv[0]))),
        "n_refs_range": {k: [min(v), max(v)] for k, v in sorted(per_cat.items())},
        "roles": dict(sorted(roles.items())),
        "pose_kinds": dict(sorted(pose_kinds.items())),
        "with_target": sum(c.target is not None for c in cases),
    }
