"""Synthetic OmniRef-Bench: procedural cases (common.synthetic) written in the official layout.

``<root>/metadata.json`` is a list of official records (``<category>/<n_refs>/<case_id>/...``
paths under ``<root>/images``, written by :func:`common.synthetic.write_split`), so the same
loader, runner and scorers run on it. Each record also carries ``synthetic`` (the case's
spec, id and sizes) so the placement metric can rebuild the case from disk.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from common.bench.loader import BenchCase
from common.bench.metrics import PlacementScorer

__all__ = ["build_synthetic_bench", "synthetic_placement_scorer"]

def build_synthetic_bench(root: str | os.PathLike, n_cases: int = 12, seed: int = 0, size: int = 64,
                          max_refs: int = 7) -> Path:
    """Write a synthetic benchmark under ``root``; returns the metadata path (images under
    ``root/images``). Deterministic in the args. The cases are written by common.synthetic's one
    writer; the bench metadata adds each case's spec so the placement metric can rebuild it."""
    from common.synthetic.cases import make_split
    from common.synthetic.writers import write_split

    root = Path(root)
    # counts 2..max_refs evenly (the benchmark spans 2-7), so every per-count row has cases
    cases = make_split("bench", n_cases, seed, size=size, max_refs=max_refs,
                       count_weights={n: 1.0 for n in range(2, max_refs + 1)})
    files = write_split(cases, root, "bench")
    records = []
    for line in files.jsonl.read_text().splitlines():
        rec = json.loads(line)
        syn = rec["synthetic"]
        records.append({k: rec[k] for k in ("image", "prompt", "edit_image", "index", "category")}
                       | {"synthetic": {"spec": syn["spec"], "case_id": syn["case_id"],
                                        "size": syn["metadata"]["size"], "ref_size": syn["metadata"]["ref_size"]}})
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
