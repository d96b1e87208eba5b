"""Write synthetic splits to disk in the two formats the rest of DyRef reads, and read them back.

Layout under ``root`` (both splits may share one root; case ids carry the split name):

    images/<category>/<n_refs>/<case_id>/target.png
    images/<category>/<n_refs>/<case_id>/transfer_subjects/<subject name>.png
    images/.../background/background.png | style/reference.png |
               lighting/lighting_reference.jpeg | pose/skeleton/<subject_name>.png
    <split>.jsonl            training records (docs/benchmark.md §1): image, edit_image, prompt,
                             index, is_style, is_test, plus category and "synthetic" (spec + metadata)
    <split>_metadata.json    OmniRef-Bench metadata (docs/benchmark.md §2): a list of
                             {image, prompt, edit_image, index, category}

All paths in the records are relative to ``root/images`` (the training format's ``image_dir``
default and the benchmark's image root), so a loader that takes roles from paths reads them as it
reads the real benchmark.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from common.synthetic.cases import SyntheticCase
from common.synthetic.spec import CaseSpec

__all__ = ["SplitFiles", "case_paths", "write_split", "load_split", "IMAGE_DIR"]

IMAGE_DIR = "images"
_ROLE_DIRS = {"subject": "transfer_subjects", "background": "background", "style": "style",
              "lighting": "lighting", "pose": "pose/skeleton"}
_EXT = {"lighting": ".jpeg"}   # the benchmark's lighting references are JPEG; everything else PNG
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]*(\.png|\.jpeg)?$")
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class SplitFiles:
    jsonl: Path
    metadata: Path
    image_dir: Path
    n_cases: int


def _safe(parts: list[str]) -> str:
    for p in parts:
        if not _COMPONENT.match(p) or p in (".", ".."):
            raise ValueError(f"unsafe path component {p!r} (allowed: letters, digits, space, '_', '-')")
    return str(PurePosixPath(*parts))


def case_paths(case: SyntheticCase) -> tuple[str, list[str]]:
    """(target path, reference paths in prompt order), relative to the image root."""
    base = [case.category, str(case.n_refs), case.case_id]
    refs = []
    for role, _, name in case.references:
        if role not in _ROLE_DIRS:
            raise ValueError(f"case {case.case_id}: unknown reference role {role!r}")
        refs.append(_safe(base + _ROLE_DIRS[role].split("/") + [name + _EXT.get(role, ".png")]))
    if len(set(refs)) != len(refs):
        raise ValueError(f"case {case.case_id}: two references would share a file: {refs}")
    return _safe(base + ["target.png"]), refs


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpeg":
        img.save(path, "JPEG", quality=95)
    else:
        img.save(path, "PNG")


def write_split(cases: list[SyntheticCase], root: str | os.PathLike, split: str) -> SplitFiles:
    """Write every image and both record files of ``split`` under ``root``. Indices must be unique."""
    if not _SPLIT.match(split):
        raise ValueError(f"split name {split!r} must be 1-64 characters of letters, digits, '_' or '-'")
    seen = set()
    for c in cases:
        if c.index in seen:
            raise ValueError(f"split {split!r}: duplicate index {c.index} (rewards match records on index)")
        seen.add(c.index)
    root = Path(root)
    images = root / IMAGE_DIR
    records, bench = [], []
    for c in cases:
        target, refs = case_paths(c)
        _save(c.target, images / target)
        for (_, img, _), rel in zip(c.references, refs):
            _save(img, images / rel)
        records.append({"image": target, "prompt": c.prompt, "edit_image": refs, "index": c.index,
                        "is_style": c.spec.style is not None, "is_test": split != "train",
                        "category": c.category,
                        "synthetic": {"case_id": c.case_id, "spec": c.spec.to_dict(), "metadata": c.metadata}})
        bench.append({"image": target, "prompt": c.prompt, "edit_image": refs, "index": c.index,
                      "category": c.category})
    root.mkdir(parents=True, exist_ok=True)
    jsonl = root / f"{split}.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = root / f"{split}_metadata.json"
    meta.write_text(json.dumps(bench, indent=1))
    return SplitFiles(jsonl=jsonl, metadata=meta, image_dir=images, n_cases=len(cases))


def _open(images: Path, rel: str, where: str) -> Image.Image:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{where}: image path {rel!r} must be relative and stay under the image root")
    with Image.open(images / p) as im:
        return im.convert("RGB")


def load_split(root: str | os.PathLike, split: str) -> list[SyntheticCase]:
    """Read ``<root>/<split>.jsonl`` (as written by :func:`write_split`) back into cases, images
    loaded from disk. Records without a "synthetic" field are not synthetic cases and are refused."""
    root = Path(root)
    images = root / IMAGE_DIR
    cases = []
    for ln, line in enumerate((root / f"{split}.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        where = f"{split}.jsonl:{ln}"
        if "synthetic" not in rec:
            raise ValueError(f"{where}: no 'synthetic' field; not a synthetic-task record")
        spec = CaseSpec.from_dict(rec["synthetic"]["spec"])
        if len(rec["edit_image"]) != spec.n_refs:
            raise ValueError(f"{where}: {len(rec['edit_image'])} edit_image paths but the spec has {spec.n_refs} references")
        refs = []
        for (role, _), rel in zip(spec.order, rec["edit_image"]):
            refs.append((role, _open(images, rel, where), PurePosixPath(rel).stem))
        cases.append(SyntheticCase(index=rec["index"], category=rec["category"], prompt=rec["prompt"],
                                   references=refs, target=_open(images, rec["image"], where), spec=spec,
                                   case_id=rec["synthetic"]["case_id"], metadata=rec["synthetic"]["metadata"]))
    return cases
