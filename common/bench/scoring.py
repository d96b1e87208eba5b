"""Score a generated run with a set of scorers: ``<run>/scores.jsonl`` + ``<run>/score_notes.json``.

Resumable like generation: a case whose record already exists for the same image (mtime and size)
and the same scorer set is not scored again. A case without a generated image gets every
applicable dimension recorded as missing (null), never as 0.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from PIL import Image

from common.bench.loader import BenchCase
from common.bench.metrics import Scorer
from common.bench.runner import image_path, is_valid_image, load_references

__all__ = ["score_run", "ScoreSummary"]


class ScoreSummary(dict):
    """{"scored": [...], "reused": [...], "no_image": [...]} index lists."""


def _image_key(path: Path) -> list[int] | None:
    if not path.is_file():
        return None
    st = path.stat()
    return [st.st_mtime_ns, st.st_size]


def score_run(run_dir: str | os.PathLike, cases: Iterable[BenchCase], scorers: list[Scorer],
              image_root: str | os.PathLike, *, progress: bool = True,
              extra_notes: Iterable[str] = ()) -> ScoreSummary:
    """Score every case's ``images/<index>.png`` and (re)write ``scores.jsonl`` (one line per case)."""
    run_dir = Path(run_dir)
    cases = list(cases)
    names = sorted(s.name for s in scorers)
    old: dict[int, dict] = {}
    path = run_dir / "scores.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                old[rec["index"]] = rec
    out = ScoreSummary(scored=[], reused=[], no_image=[])
    records = []
    columns = (TextColumn("[bold]score"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("score", total=len(cases))
        for case in cases:
            img_path = image_path(run_dir, case.index)
            key = _image_key(img_path)
            prev = old.get(case.index)
            if prev and key and prev.get("image_key") == key and prev.get("scorers") == names:
                records.append(prev)
                out["reused"].append(case.index)
                bar.advance(task)
                continue
            rec = {"index": case.index, "category": case.category, "n_refs": case.n_refs,
                   "scorers": names, "image_key": key, "scores": {}, "errors": {}}
            applicable = [s for s in scorers if s.applies(case)]
            if key is None or not is_valid_image(img_path):
                rec["errors"]["image"] = "no generated image"
                for s in applicable:
                    rec["scores"].update({d: None for d in s.dims})
                out["no_image"].append(case.index)
            else:
                with Image.open(img_path) as im:
                    image = im.convert("RGB")
                refs = load_references(case, image_root)
                for s in applicable:
                    try:
                        rec["scores"].update(s.score(case, image, refs))
                    except Exception as e:  # noqa: BLE001 - one scorer failing must not lose the others
                        rec["scores"].update({d: None for d in s.dims})
                        rec["errors"][s.name] = f"{type(e).__name__}: {e}"
                out["scored"].append(case.index)
            records.append(rec)
            bar.advance(task)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    notes = sorted({n for s in scorers for n in s.notes} | set(extra_notes))
    (run_dir / "score_notes.json").write_text(json.dumps(notes, indent=2))
    return out
