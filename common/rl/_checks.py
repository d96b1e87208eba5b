"""Small input checks shared by the pure RL functions (bad input -> a ValueError naming it)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_float", "as_bool", "check_shape", "masked_mean_std"]


def as_float(x: Any, name: str) -> torch.Tensor:
    """Tensor view of ``x`` (tensor, numpy array, list or scalar); integers become float32."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(x)
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: cannot be read as a numeric array ({e})") from None
    if t.dtype == torch.bool:
        raise ValueError(f"{name}: expected numbers, got a boolean array")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def as_bool(x: Any, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype != torch.bool:
        raise ValueError(f"{name}: expected a boolean array, got dtype {t.dtype}")
    return t


def check_shape(t: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def masked_mean_std(x: torch.Tensor, valid: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, population std (ddof 0) and count of ``x`` over ``dim`` using only ``valid`` entries.

    Invalid entries may hold anything (NaN included): they are replaced by 0 before any
    arithmetic, so they can never leak into the statistics. With no valid entry, mean = std = 0.
    """
    xv = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    n = valid.sum(dim=dim, keepdim=True).to(x.dtype)
    n_safe = n.clamp_min(1)
    mean = xv.sum(dim=dim, keepdim=True) / n_safe
    dev = torch.where(valid, x - mean, torch.zeros((), dtype=x.dtype, device=x.device))
    std = (dev.pow(2).sum(dim=dim, keepdim=True) / n_safe).sqrt()
    return mean, std, n
