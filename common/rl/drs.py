"""Discriminative reward scaling, "DRS" (docs/algorithm.md §1, the ``image_similarity`` reward).

    k(n) = k0 + k1·(n − 2)        (increase, released: 10, 13, 16, 19, 22 for n = 2..6)
         = k0 + k1·(n_max − n)    (decrease)
         = k0                     (constant)
    r    = reduce_j sigmoid(k(n)·(s_j − τ))      released: τ 0.65, reduce mean
    raw  = reduce_j s_j                           (DAR's difficulty reads this, docs/algorithm.md §3)

A steeper slope with more references sharpens the separation of a group's members around τ.
When DRS is off (ablation) the reward is the raw similarity. The config refuses at load any
slope with k(n) <= 0 for a reference count a task may carry (docs/algorithm.md §5).
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from ._checks import as_bool, as_float, check_shape

__all__ = ["drs_slope", "drs_reward", "apply_drs", "calibrate_tau"]

KMode = Literal["increase", "decrease", "constant"]
Reduce = Literal["mean", "max", "min"]


def drs_slope(n: Any, k0: float, k1: float, k_mode: KMode = "increase", n_max: int = 6) -> torch.Tensor:
    """Sigmoid slope k(n) for reference counts ``n`` (any shape) -> same shape, float.

    Raises ValueError when a slope is not positive: a non-positive slope would flip or flatten
    the reward's order in the similarity, which is never intended.
    """
    nt = as_float(n, "n_refs")
    if k_mode == "increase":
        k = k0 + k1 * (nt - 2)
    elif k_mode == "decrease":
        k = k0 + k1 * (n_max - nt)
    elif k_mode == "constant":
        k = torch.full_like(nt, float(k0))
    else:
        raise ValueError(f"k_mode: expected 'increase', 'decrease' or 'constant', got {k_mode!r}")
    if not torch.isfinite(k).all() or (k <= 0).any():
        bad = torch.unique(nt[~(torch.isfinite(k) & (k > 0))]).flatten()[:3].tolist()  # one per count
        raise ValueError(f"drs slope k(n) must be > 0; k_mode={k_mode}, k0={k0}, k1={k1}, n_max={n_max} "
                         f"gives k <= 0 for n in {bad}")
    return k


def _reduce(x: torch.Tensor, mask: torch.Tensor, how: Reduce) -> torch.Tensor:
    if how == "mean":
        s = torch.where(mask, x, torch.zeros_like(x)).sum(-1)
        return s / mask.sum(-1).clamp_min(1).to(x.dtype)
    if how == "max":
        return torch.where(mask, x, torch.full_like(x, -torch.inf)).amax(-1)
    if how == "min":
        return torch.where(mask, x, torch.full_like(x, torch.inf)).amin(-1)
    raise ValueError(f"reduce: expected 'mean', 'max' or 'min', got {how!r}")


def drs_reward(
    sims: Any,
    n_refs: Any,
    tau: float = 0.65,
    k0: float = 10.0,
    k1: float = 3.0,
    k_mode: KMode = "increase",
    n_max: int = 6,
    reduce: Reduce = "mean",
    mask: Any | None = None,
    enabled: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRS reward and raw similarity.

    Args:
        sims: [..., J] cosine similarities s_j of one image to each of its J targets (padded).
        n_refs: [...] number of references n of each sample (sets the slope, not J).
        mask: [..., J] bool, True where s_j is a real target; None = all real.
        enabled: False = ablation, the reward is the raw similarity.
    Returns:
        (reward [...], raw [...]). A sample with no real target gets NaN in both — the
        "missing score" marker that :func:`gdpo_advantages` understands (the reference returns
        0 and misaligns its extra-info lists instead).
    """
    s = as_float(sims, "sims")
    if s.dim() < 1:
        raise ValueError("sims: expected shape [..., J]")
    m = torch.ones_like(s, dtype=torch.bool) if mask is None else as_bool(mask, "mask").to(s.device)
    check_shape(m, tuple(s.shape), "mask")
    if not torch.isfinite(torch.where(m, s, torch.zeros_like(s))).all():
        raise ValueError("sims: non-finite similarity at an unmasked position")
    any_target = m.any(-1)
    raw = _reduce(s, m, reduce)
    if enabled:
        n = as_float(n_refs, "n_refs").to(s.device)
        check_shape(n, tuple(s.shape[:-1]), "n_refs")
        k = drs_slope(n, k0, k1, k_mode, n_max).to(s.dtype)
        reward = _reduce(torch.sigmoid(k[..., None] * (s - tau)), m, reduce)
    else:
        reward = raw.clone()
    nan = torch.full_like(raw, float("nan"))
    return torch.where(any_target, reward, nan), torch.where(any_target, raw, nan)


def calibrate_tau(raw_scores: Any, quantile: float = 0.5) -> float:
    """τ for ``tau: auto``: the ``quantile`` of the starting policy's raw per-reference scores s_j.

    raw_scores: any shape, NaN = missing (ignored). The sigmoid is then steepest where the starting
    policy's scores are, so DRS spreads a group instead of mapping every member to ≈ 0 or ≈ 1
    (with the released τ = 0.65 and scores near 0.93, every member maps to ≈ 1). Raises ValueError
    when no score is finite."""
    x = as_float(raw_scores, "raw_scores").flatten()
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        raise ValueError("cannot calibrate the DRS tau: no finite raw score in the batch")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"tau quantile must lie in (0, 1), got {quantile}")
    return float(torch.quantile(x.double(), quantile))


def apply_drs(cfg: Any, sims: Any, n_refs: Any, mask: Any | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`drs_reward` with the fields of a ``DRSConfig`` (honours ``cfg.enabled``). A tau of
    'auto' must have been replaced by its calibrated value (:func:`calibrate_tau`) before."""
    if cfg.enabled and isinstance(cfg.tau, str):
        raise ValueError("rl.drs.tau is 'auto' but was not calibrated: pass a config with the calibrated tau")
    return drs_reward(sims, n_refs, tau=cfg.tau, k0=cfg.k0, k1=cfg.k1, k_mode=cfg.k_mode,
                      n_max=cfg.n_max, reduce=cfg.reduce, mask=mask, enabled=cfg.enabled)
