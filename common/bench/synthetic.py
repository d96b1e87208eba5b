"""Synthetic OmniRef-Bench: procedural cases (common.synthetic) written in the official layout.

``<root>/metadata.json`` is a list of official records (``<category>/<n_refs>/<case_id>/...``
paths, ``transfer_subjects/<name>.png``, ``style/reference.png``, ``background/background.png``,
``lighting/lighting_reference.jpeg``, ``pose/skeleton/<name>.png``, target ``<case_id>.png``), so
the same loader, runner and scorers run on it. Each record also carries ``synthetic`` (the case's
spec, id and sizes) so the placement metric can rebuild the case from disk.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from common.bench.loader import BenchCase
from common.bench.metrics import PlacementScorer

__all__ = ["build_synthetic_bench", "synthetic_placement_scorer", "ROLE_FILES"]

ROLE_FILES = {"style": ("style", "reference.png"), "background": ("background", "background.png"),
              "lighting": ("lighting", "lighting_reference.jpeg")}


def _ref_path(prefix: str, role: str, name: str) -> str:
    if role == "subject":
        return f"{prefix}/transfer_subjects/{name}.png"
    if role == "pose":
        return f"{prefix}/pose/skeleton/{name}.png"
    folder, file = ROLE_FILES[role]
    return f"{prefix}/{folder}/{file}"


def build_synthetic_bench(root: str | os.PathLike, n_cases: int = 12, seed: int = 0, size: int = 64,
                          max_refs: int = 7) -> Path:
    """Write a synthetic benchmark under ``root``; returns the metadata path. Deterministic in the args."""
    from common.synthetic.cases import make_split

    root = Path(root)
    # counts 2..max_refs evenly (the benchmark spans 2-7), so every per-count row has cases
    cases = make_split("bench", n_cases, seed, size=size, max_refs=max_refs,
                       count_weights={n: 1.0 for n in range(2, max_refs + 1)})
    records = []
    for c in cases:
        prefix = f"{c.category}/{c.n_refs}/{c.case_id}"
        paths = []
        for role, img, name in c.references:
            rel = _ref_path(prefix, role, name)
            if rel in paths:
                raise ValueError(f"synthetic case {c.case_id}: two references map to {rel}")
            out = root / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            img.convert("RGB").save(out, quality=95) if rel.endswith(".jpeg") else img.save(out)
            paths.append(rel)
        target = f"{prefix}/{c.case_id}.png"
        c.target.save(root / target)
        records.append({"image": target, "prompt": c.prompt, "edit_image": paths, "index": c.index,
                        "category": c.category,
                        "synthetic": {"spec": c.spec.to_dict(), "case_id": c.case_id, "size": c.size,
                                      "ref_size": c.references[0][1].size[0]}})
    meta = root / "metadata.json"
    meta.write_text(json.dumps(records, indent=1))
    return meta


def synthetic_placement_scorer(cases: list[BenchCase]) -> PlacementScorer | None:
    """Placement-accuracy scorer for cases that carry a ``synthetic`` spec; None when none does or
    common.synthetic is unavailable."""
    try:
        from common.synthetic.cases import case_from_spec
        from common.synthetic.metrics import placement_accuracy
        from common.synthetic.spec import CaseSpec
    except ImportError:
        return None
    info = {c.index: c.extra["synthetic"] for c in cases if "synthetic" in c.extra}
    if not info:
        return None
    cache: dict[int, object] = {}

    def lookup(index: int):
        if index not in info:
            return None
        if index not in cache:
            d = info[index]
            cache[index] = case_from_spec(CaseSpec.from_dict(d["spec"]), index, d["case_id"], d["size"], d["ref_size"])
        return cache[index]

    return PlacementScorer(lookup, placement_accuracy)
