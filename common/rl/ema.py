"""Exponential moving average of the trainable weights (docs/algorithm.md §13).

    ema ← d·ema + (1 − d)·θ,   applied only when (step + 1) % update_interval == 0
    d   = min((1 + step) / (10 + step), decay)   with warm-up (the reference), else d = decay

With the released values (decay 0.9, interval 4) the updates happen at steps 3, 7, 11, … with
d = 0.31, 0.47, 0.6, … → 0.9. The EMA weights are for evaluation and export; rollouts use the
live weights.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import torch

__all__ = ["EMA", "ema_decay"]


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """d at learner step ``step`` (0-based)."""
    return min((1.0 + step) / (10.0 + step), decay) if warmup else decay


def _named(params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(params, Mapping):
        out = dict(params)
    else:
        out = {str(i): p for i, p in enumerate(params)}
    for name, p in out.items():
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise ValueError(f"EMA parameter {name!r}: expected a floating-point tensor")
    return out


class EMA:
    """EMA over named tensors (a dict such as ``{n: p for n, p in model.named_parameters() if p.requires_grad}``
    or any iterable of tensors, named "0", "1", ...). The shadow starts as a copy of the weights.

    Args:
        params: the live tensors; kept by reference and read by :meth:`update`.
        decay: final decay d (0 < d < 1).
        update_interval: update only when (step + 1) % update_interval == 0.
        warmup: d_t = min((1 + t)/(10 + t), decay).
    """

    def __init__(self, params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor], decay: float = 0.9,
                 update_interval: int = 1, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if int(update_interval) != update_interval or update_interval < 1:
            raise ValueError(f"update_interval must be an integer >= 1, got {update_interval}")
        self.params = _named(params)
        self.decay, self.update_interval, self.warmup = float(decay), int(update_interval), bool(warmup)
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.num_updates = 0

    @classmethod
    def from_config(cls, cfg: Any, params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> "EMA":
        """From an ``EMAConfig`` (its ``enabled`` flag is the caller's business)."""
        return cls(params, decay=cfg.decay, update_interval=cfg.update_interval, warmup=cfg.warmup)

    @torch.no_grad()
    def update(self, step: int) -> float | None:
        """Fold the live weights in at learner step ``step``; returns d, or None when skipped."""
        if (step + 1) % self.update_interval:
            return None
        d = ema_decay(step, self.decay, self.warmup)
        for n, p in self.params.items():
            self.shadow[n].mul_(d).add_(p.detach().to(self.shadow[n]), alpha=1.0 - d)
        self.num_updates += 1
        return d

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor] | None = None) -> None:
        """Write the EMA weights into ``params`` (default: the tracked live tensors), in place."""
        target = self.params if params is None else _named(params)
        missing = set(self.shadow) - set(target)
        if missing or len(target) != len(self.shadow):
            raise ValueError(f"copy_to: parameter names differ from the EMA's (missing {sorted(missing)[:3]})")
        for n, p in target.items():
            if p.shape != self.shadow[n].shape:
                raise ValueError(f"copy_to: {n!r} has shape {tuple(p.shape)}, EMA has {tuple(self.shadow[n].shape)}")
            p.copy_(self.shadow[n])

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Within the block the live tensors hold the EMA weights; the live ones come back after."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "update_interval": self.update_interval, "warmup": self.warmup,
                "num_updates": self.num_updates,
                "shadow": {n: t.clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError(f"load_state_dict: names differ: {sorted(set(shadow) ^ set(self.shadow))[:5]}")
        for n, t in shadow.items():
            if tuple(t.shape) != tuple(self.shadow[n].shape):
                raise ValueError(f"load_state_dict: {n!r} has shape {tuple(t.shape)}, expected {tuple(self.shadow[n].shape)}")
        self.decay, self.update_interval = float(state["decay"]), int(state["update_interval"])
        self.warmup, self.num_updates = bool(state["warmup"]), int(state["num_updates"])
        with torch.no_grad():
            for n, t in shadow.items():
                self.shadow[n].copy_(t)
