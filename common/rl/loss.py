"""Clipped PPO surrogate with DAR group weights and a KL penalty (docs/algorithm.md §12), plus diagnostics.

Per sample i (B samples, one trained SDE step each; logp is the per-element-mean log-prob):

    A_i  = clip(A_i, −adv_clip, adv_clip)                      released adv_clip 5
    ρ_i  = exp(logp_new_i − logp_old_i)                        logp_old = stored rollout log-prob
    ℓ_i  = max(−A_i ρ_i, −A_i clip(ρ_i, 1 − ε, 1 + ε)) · w_i   released ε 1e-4; w_i = DAR weight
    L    = mean_i ℓ_i + β · mean_i KL_i                        released β 0.04

(Schulman et al. 2017, eq. 7; Flow-GRPO eq. 10.) The mean is over the samples passed in; the
learner averages micro-batches itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ._checks import as_float, check_shape
from .advantages import zero_std_fraction

__all__ = ["LossStats", "ppo_loss", "batch_diagnostics"]


@dataclass(frozen=True)
class LossStats:
    """Scalars of one loss evaluation; the learner records them as ``losses/<name>`` (common/rl/history.py)."""

    loss: float
    policy_loss: float
    unclipped_loss: float       # mean −A·ρ·w
    clipped_loss: float         # mean −A·clip(ρ)·w
    kl: float                   # mean KL (before β); 0 when none was given
    kl_penalty: float           # β · kl
    ratio_mean: float
    ratio_min: float
    ratio_max: float
    clip_frac_high: float       # fraction with ρ > 1 + ε (released definition)
    clip_frac_low: float        # fraction with ρ < 1 − ε
    clip_frac_active: float     # fraction whose clipped branch wins, i.e. gradient exactly 0
    approx_kl: float            # mean (ρ − 1) − log ρ  (Schulman's k3 estimator of KL(old‖new))
    adv_mean: float             # of the clipped advantages
    adv_abs_mean: float
    adv_min: float
    adv_max: float
    adv_clip_frac: float        # fraction with |A| > adv_clip before clipping
    weight_mean: float
    weight_min: float
    weight_max: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def _vec(x: Any, name: str, b: int | None) -> torch.Tensor:
    t = as_float(x, name)
    if t.dim() != 1:
        raise ValueError(f"{name}: expected shape [B], got {tuple(t.shape)}")
    if b is not None:
        check_shape(t, (b,), name)
    return t


def ppo_loss(
    logp_new: torch.Tensor,
    logp_old: Any,
    advantages: Any,
    group_weights: Any | None = None,
    clip_range: float = 1e-4,
    adv_clip: float = 5.0,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    """Clipped PPO loss (formula in the module docstring).

    Args:
        logp_new: [B] log-prob under the current policy (carries the gradient).
        logp_old: [B] stored rollout log-prob (π_old); detached here.
        advantages: [B] per-sample advantages; detached and clipped to ±adv_clip.
        group_weights: [B] DAR weight of each sample's group, or None (all 1); detached.
        clip_range: PPO ε (ratio clipped to [1 − ε, 1 + ε]).
        adv_clip: advantage clip bound (> 0).
        kl: [B] per-sample KL (carries its own gradient) or None.
        kl_beta: β of the KL term.
    Returns:
        (loss: 0-dim tensor, stats: LossStats).
    """
    if not isinstance(logp_new, torch.Tensor):
        raise ValueError("logp_new: expected a torch tensor (it carries the gradient)")
    if clip_range <= 0 or adv_clip <= 0 or kl_beta < 0:
        raise ValueError(f"need clip_range > 0, adv_clip > 0, kl_beta >= 0; got {clip_range}, {adv_clip}, {kl_beta}")
    new = _vec(logp_new, "logp_new", None)
    b = new.shape[0]
    if b == 0:
        raise ValueError("logp_new: empty batch")
    old = _vec(logp_old, "logp_old", b).detach().to(new)
    a_raw = _vec(advantages, "advantages", b).detach().to(new)
    w = torch.ones_like(new) if group_weights is None else _vec(group_weights, "group_weights", b).detach().to(new)
    for name, t in (("logp_new", new), ("logp_old", old), ("advantages", a_raw), ("group_weights", w)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: contains NaN or inf")
    if (w < 0).any():
        raise ValueError("group_weights: must be >= 0")

    a = a_raw.clamp(-adv_clip, adv_clip)
    log_ratio = new - old
    ratio = log_ratio.exp()
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy_loss = (torch.maximum(unclipped, clipped) * w).mean()
    loss = policy_loss
    kl_mean = torch.zeros((), dtype=new.dtype)
    if kl is not None:
        kl_t = _vec(kl, "kl", b)
        kl_mean = kl_t.mean()
        if kl_beta > 0:
            loss = loss + kl_beta * kl_mean

    with torch.no_grad():
        r = ratio.detach()
        lr = log_ratio.detach()
        active = (unclipped.detach() < clipped.detach())
        stats = LossStats(
            loss=float(loss.detach()),
            policy_loss=float(policy_loss.detach()),
            unclipped_loss=float((unclipped.detach() * w).mean()),
            clipped_loss=float((clipped.detach() * w).mean()),
            kl=float(kl_mean.detach()),
            kl_penalty=float(kl_beta * kl_mean.detach()),
            ratio_mean=float(r.mean()), ratio_min=float(r.min()), ratio_max=float(r.max()),
            clip_frac_high=float((r > 1.0 + clip_range).double().mean()),
            clip_frac_low=float((r < 1.0 - clip_range).double().mean()),
            clip_frac_active=float(active.double().mean()),
            approx_kl=float(((r - 1.0) - lr).mean()),
            adv_mean=float(a.mean()), adv_abs_mean=float(a.abs().mean()),
            adv_min=float(a.min()), adv_max=float(a.max()),
            adv_clip_frac=float((a_raw.abs() > adv_clip).double().mean()),
            weight_mean=float(w.mean()), weight_min=float(w.min()), weight_max=float(w.max()),
        )
    return loss, stats


def batch_diagnostics(
    rewards: Any,
    group_weights: Any | None = None,
    eps: float = 1e-6,
    applies: Any | None = None,
) -> dict[str, float]:
    """Per-batch diagnostics that are not tied to one loss evaluation.

    Args:
        rewards: [B, G] aggregated or [K, B, G] per-component rewards (NaN = missing).
        group_weights: [B] DAR weights per group, or None.
        applies: [K, B] (or [B]) bool, forwarded to :func:`zero_std_fraction`.
    Returns:
        {"zero_std_frac"} and, with weights, "dar_weight_mean/std/min/max" and "dar_all_equal"
        (1.0 when every group got the same weight: DAR changed nothing this batch).
    """
    out = {"zero_std_frac": zero_std_fraction(rewards, eps, applies)}
    if group_weights is not None:
        w = _vec(group_weights, "group_weights", None).double()
        if w.numel():
            out.update(
                dar_weight_mean=float(w.mean()), dar_weight_std=float(w.std(unbiased=False)),
                dar_weight_min=float(w.min()), dar_weight_max=float(w.max()),
                dar_all_equal=float(bool((w.max() - w.min()) <= 1e-9 * w.abs().max().clamp_min(1.0))),
            )
    return out
