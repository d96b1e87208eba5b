"""Where the learner's tasks come from: training cases in a seeded, resumable order."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.images import ImageError, decode_image, encode_image
from common.schemas import Reference, SamplingParams, Task

__all__ = ["TrainingCase", "TaskSource", "synthetic_cases", "record_cases"]


@dataclass
class TrainingCase:
    prompt: str
    references: list[tuple[str, Image.Image, str]]  # (role, image, name) in prompt order
    target: Image.Image | None
    index: int
    boxes: list[tuple[float, float, float, float] | None] | None = None  # per reference: where it belongs


class TaskSource:
    """The n-th admitted task is case ``order[n % len]``: resumable from the admission count alone."""

    def __init__(self, cases: list[TrainingCase], seed: int = 0):
        if not cases:
            raise ValueError("TaskSource needs at least one training case")
        self.cases = cases
        self.order = np.random.default_rng(seed).permutation(len(cases))
        self._encoded: dict[int, tuple[tuple[Reference, ...], bytes | None]] = {}

    def _wire(self, i: int):
        if i not in self._encoded:
            c = self.cases[i]
            boxes = c.boxes or [None] * len(c.references)
            refs = tuple(Reference(role=role, image=encode_image(img), description=name or None, box=box)
                         for (role, img, name), box in zip(c.references, boxes))
            self._encoded[i] = (refs, encode_image(c.target) if c.target is not None else None)
        return self._encoded[i]

    def task(self, n: int, run_id: str, policy_version: int, group_size: int, sampling: SamplingParams) -> Task:
        i = int(self.order[n % len(self.cases)])
        refs, target = self._wire(i)
        seed = int.from_bytes(hashlib.sha256(f"{run_id}:{n}".encode()).digest()[:4], "little")
        return Task(task_id=f"{run_id}-{n:08d}", prompt=self.cases[i].prompt, references=refs, group_size=group_size,
                    policy_version=policy_version, sampling=sampling, seed=seed, target=target,
                    record_index=self.cases[i].index)


def synthetic_cases(n: int, seed: int, size: int, ref_size: int, max_refs: int = 6, name: str = "train") -> list[TrainingCase]:
    from common.synthetic.cases import make_split
    return [TrainingCase(**c.training_case())
            for c in make_split(name, n, seed, size=size, ref_size=ref_size, max_refs=max_refs)]


def record_cases(jsonl: str | Path, image_root: str | Path) -> list[TrainingCase]:
    """Training records (image = target, edit_image = ordered references, prompt, index)."""
    from common.bench.loader import resolve_image, role_of_path
    root = Path(image_root)
    out = []
    for line_no, line in enumerate(Path(jsonl).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            # path traversal refused by resolve_image; byte/pixel limits by the one decode path
            refs = [(role_of_path(p), _open(resolve_image(root, p)), Path(p).stem) for p in rec["edit_image"]]
            target = _open(resolve_image(root, rec["image"])) if rec.get("image") else None
            out.append(TrainingCase(rec["prompt"], refs, target, int(rec["index"])))
        except (KeyError, ValueError, OSError, ImageError) as e:
            raise ValueError(f"{jsonl}:{line_no}: bad training record: {e}") from None
    return out


def _open(path: Path) -> Image.Image:
    return decode_image(Path(path).read_bytes(), what=str(path))
