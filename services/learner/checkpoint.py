"""Learner checkpoints: trainable weights, optimizer, EMA, step, version, counters — atomically.

Layout: <dir>/step-<N>/{trainable.safetensors, ema.safetensors, optimizer.pt, state.json} and
<dir>/latest (the name of the newest complete checkpoint). A checkpoint is written to a temporary
folder and renamed, so a crash mid-write never leaves a half checkpoint behind `latest`.
The optimizer state is read back with ``torch.load(weights_only=True)`` (no arbitrary pickle).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["LearnerState", "save_checkpoint", "load_latest", "Checkpoint"]


@dataclass
class LearnerState:
    step: int = 0
    version: int = 0
    run_id: str = ""
    history: list[dict] = field(default_factory=list)  # per-step scalars, for reports and resume
    drs_tau: float | None = None  # rl.drs.tau=auto: the value calibrated on the first batch


@dataclass
class Checkpoint:
    path: Path
    state: LearnerState
    trainable: bytes
    optimizer: dict | None
    ema: dict[str, torch.Tensor] | None


def save_checkpoint(root: str | os.PathLike, state: LearnerState, trainable: bytes, optimizer: dict,
                    ema: dict[str, torch.Tensor] | None = None, keep: int = 3) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    (tmp / "trainable.safetensors").write_bytes(trainable)
    torch.save(optimizer, tmp / "optimizer.pt")
    if ema is not None:
        save_file({k: v.detach().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(name)
    latest_tmp.replace(root / "latest")
    ckpts = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(root: str | os.PathLike) -> Checkpoint | None:
    root = Path(root)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = (root / name).resolve()
    if path.parent != root.resolve() or not name.startswith("step-"):
        raise ValueError(f"checkpoint pointer {pointer} names {name!r}, outside {root}")
    st = json.loads((path / "state.json").read_text())
    state = LearnerState(**st)
    opt = torch.load(path / "optimizer.pt", weights_only=True) if (path / "optimizer.pt").exists() else None
    ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").exists() else None
    return Checkpoint(path, state, (path / "trainable.safetensors").read_bytes(), opt, ema)
