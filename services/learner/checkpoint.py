"""Learner checkpoints: trainable weights, optimizer, EMA, step, version, counters — atomically.

Layout: <dir>/step-<N>/ holds state.json (step, version, run id, history) and either
``trainer/`` (the RL learner: a ``torch.distributed.checkpoint`` folder of the trainable weights,
AdamW state, EMA and RNG that any trainer worker count loads, services/learner/trainer.py) or the
one-file layout {trainable.safetensors, ema.safetensors, optimizer.pt} (SFT, and RL checkpoints
of earlier versions); <dir>/latest names the newest complete checkpoint. A checkpoint is written
to a temporary folder and renamed, so a crash mid-write never leaves a half checkpoint behind
`latest`. The optimizer state is read back with ``torch.load(weights_only=True)`` (no arbitrary pickle).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

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
    trainable: bytes | None            # one-file layout only
    optimizer: dict | None
    ema: dict[str, torch.Tensor] | None

    @property
    def trainer_dir(self) -> Path | None:
        """The ``torch.distributed.checkpoint`` folder of the trainer, when this checkpoint has one."""
        d = self.path / "trainer"
        return d if d.is_dir() else None


def save_checkpoint(root: str | os.PathLike, state: LearnerState, trainable: bytes | None = None,
                    optimizer: dict | None = None, ema: dict[str, torch.Tensor] | None = None, keep: int = 3,
                    write_trainer: Callable[[Path], None] | None = None) -> Path:
    """Write step ``state.step``: the one-file layout from (trainable, optimizer, ema), or the
    trainer's own folder through ``write_trainer(<tmp>/trainer)``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    if write_trainer is not None:
        try:
            write_trainer(tmp / "trainer")
        except BaseException:  # e.g. the trainer workers were lost mid-write: no half checkpoint left
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if trainable is not None:
        (tmp / "trainable.safetensors").write_bytes(trainable)
    if optimizer is not None:
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
    trainable = (path / "trainable.safetensors").read_bytes() if (path / "trainable.safetensors").exists() else None
    return Checkpoint(path, state, trainable, opt, ema)
