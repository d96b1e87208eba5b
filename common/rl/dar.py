"""Difficulty-aware reweighting, "DAR": a focal-style weight per group (docs/algorithm.md §3).

Difficulty of group g, in both modes (the released order: clip each member, then average)::

    p_i  = clip(raw_i, 0, 1)              raw_i = member i's raw (pre-sigmoid) similarity
    p̄_g  = mean_i p_i                     over g's scored members        (:func:`group_difficulty`)

A negative cosine therefore counts as 0 ("no likeness"), never as "worse than none": one member
at −0.9 cannot drag a group whose other members match down to the hardest weight.

mode "normalized" (default) reads gamma, beta, n0, w_min, w_max::

    b_g = (1 − p̄_g + 1e-6)^γ · (n_g / n0)^β            γ float; the count factor is off when β = 0
    w_g = clip(c · b_g, w_min, w_max)   with the scalar c > 0 chosen so that mean_g w_g = 1

This is one closed-form scale-then-clip, not a clip/renormalise loop: the weights keep their
order, and their ratios wherever they are not at a bound (groups at a bound stay exactly there).
A literal clip/renormalise loop also rescales the clipped weights and stops at a path-dependent
point, so it is not used. c is found exactly (mean_g clip(c·b_g) is piecewise linear and
non-decreasing in c), so the weights are positive, within [w_min, w_max] and have mean 1 to
rounding whenever w_min ≤ 1 ≤ w_max.

mode "reference" reproduces the released code exactly, for comparisons; it reads gamma (cast to
int), w_min and w_max, and ignores beta, n0 and the reference counts::

    w  = clip((max(0, 1 − p̄) + 1e-6)^int(γ), w_min, w_max)
    w  = clip(w / max(mean w, 1e-6), w_min, w_max)

Two released bugs are kept in this mode only: γ is cast to int (γ = 1.5 acts as 1, γ = 0.5 as 0),
and clipping *before* normalising sends every group with p̄ > 1 − 0.5^(1/γ) (0.29 for γ = 2) to
the 0.5 floor, so in the usual similarity range (0.5-0.8) all weights come back as 1: a no-op.
The released count factor is dead code, so ``n_refs`` is ignored there.
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from ._checks import as_float, check_shape

__all__ = ["dar_weights", "apply_dar", "group_difficulty", "scale_clip_to_unit_mean"]

Mode = Literal["normalized", "reference"]


def group_difficulty(raw: Any) -> torch.Tensor:
    """p̄_g = mean_i clip(raw_gi, 0, 1) over group g's scored members. [B, G] -> [B]; NaN = missing.

    Each member is clipped *before* the mean, as the released code does: averaging first would let
    a negative member cancel a matching one (raw [−0.5, 0.5] would read as p̄ = 0, the hardest).
    A group with no scored member gets NaN; :func:`dar_weights` rejects it, so the caller decides.
    """
    r = as_float(raw, "raw")
    if r.dim() != 2:
        raise ValueError(f"raw: expected shape [B, G], got {tuple(r.shape)}")
    return torch.nanmean(r.clamp(0.0, 1.0), dim=-1)  # clamp keeps NaN


def scale_clip_to_unit_mean(b: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """w = clip(c·b, lo, hi) with c > 0 such that mean(w) = 1. b: [B] positive -> [B] float64.

    mean(clip(c·b)) is continuous, piecewise linear and non-decreasing in c, from lo (c → 0) to
    hi (c → ∞); its kinks are at c = lo/b_i and hi/b_i. Find the segment where it crosses 1 and
    solve the linear equation there.
    """
    if not lo <= 1.0 <= hi:
        raise ValueError(f"DAR bounds must satisfy w_min <= 1 <= w_max for a mean-1 weight, got [{lo}, {hi}]")
    b = b.double()
    n = b.numel()
    if lo == 1.0 or hi == 1.0 or n == 1:
        return torch.ones_like(b)  # a mean-1 vector bounded on one side by 1 is all ones
    kinks = torch.cat([torch.zeros(1, dtype=b.dtype, device=b.device), lo / b, hi / b]).unique()  # sorted
    f = torch.clamp(kinks[:, None] * b[None, :], lo, hi).mean(dim=1)                            # [M]
    idx = int(torch.searchsorted(f.contiguous(), torch.tensor([1.0], dtype=f.dtype, device=f.device)))
    if idx >= f.numel() or f[idx] == 1.0:  # exact hit (idx past the end only by rounding at hi ≈ 1)
        return torch.clamp(kinks[min(idx, f.numel() - 1)] * b, lo, hi)
    c_left, c_right = kinks[idx - 1], kinks[idx]                   # f(c_left) < 1 < f(c_right)
    mid = 0.5 * (c_left + c_right) * b
    at_lo, at_hi = mid <= lo, mid >= hi
    free = ~(at_lo | at_hi)
    # counts as float64: a python float times an int64 tensor would be float32
    n_lo, n_hi = at_lo.sum().to(b.dtype), at_hi.sum().to(b.dtype)
    c = (n - lo * n_lo - hi * n_hi) / b[free].sum()
    return torch.clamp(c * b, lo, hi)


def dar_weights(
    p_bar: Any,
    n_refs: Any | None = None,
    gamma: float = 2.0,
    beta: float = 0.0,
    n0: float = 3.0,
    w_min: float = 0.5,
    w_max: float = 5.0,
    mode: Mode = "normalized",
) -> torch.Tensor:
    """Per-group DAR weights (formulas in the module docstring).

    Args:
        p_bar: [B] group difficulty p̄_g in [0, 1], see :func:`group_difficulty` (clipped to [0, 1]
            again here, which changes nothing for a p̄ it computed).
        n_refs: [B] reference count of each group, or None (count factor off). Ignored in
            "reference" mode (dead code in the released trainer).
        gamma, beta, n0, w_min, w_max: see DARConfig.
        mode: "normalized" (default) or "reference".
    Returns:
        [B] weights, dtype of ``p_bar``. The normalisation runs over the B groups passed in, so
        pass the whole batch (the reference normalises per rank over a subset).
    """
    p = as_float(p_bar, "p_bar")
    if p.dim() != 1:
        raise ValueError(f"p_bar: expected shape [B], got {tuple(p.shape)}")
    if p.numel() == 0:
        return p.clone()
    if not torch.isfinite(p).all():
        raise ValueError("p_bar: non-finite group difficulty (a group without any scored member?)")
    if gamma < 0 or beta < 0 or n0 <= 0 or w_min <= 0 or w_max < w_min:
        raise ValueError(f"DAR parameters out of range: gamma={gamma}, beta={beta}, n0={n0}, "
                         f"w_min={w_min}, w_max={w_max}")
    x = p.double().clamp(0.0, 1.0)
    if mode == "reference":
        g = int(gamma)  # reference bug (grpo.py L357), reproduced on purpose in this mode only
        w = torch.clamp((1.0 - x).clamp_min(0.0) + 1e-6, min=0.0) ** g
        w = torch.clamp(w, w_min, w_max)
        w = torch.clamp(w / w.mean().clamp_min(1e-6), w_min, w_max)
        return w.to(p.dtype)
    if mode != "normalized":
        raise ValueError(f"mode: expected 'normalized' or 'reference', got {mode!r}")
    b = (1.0 - x + 1e-6) ** float(gamma)
    if n_refs is not None and beta != 0:
        n = as_float(n_refs, "n_refs").double().to(x.device)
        check_shape(n, tuple(x.shape), "n_refs")
        if not torch.isfinite(n).all() or (n <= 0).any():
            raise ValueError("n_refs: reference counts must be finite and > 0")
        b = b * (n / n0) ** float(beta)
    return scale_clip_to_unit_mean(b, w_min, w_max).to(p.dtype)


def apply_dar(cfg: Any, p_bar: Any, n_refs: Any | None = None) -> torch.Tensor:
    """:func:`dar_weights` with the fields of a ``DARConfig``; all ones when ``cfg.enabled`` is False."""
    p = as_float(p_bar, "p_bar")
    if not cfg.enabled:
        if p.dim() != 1:
            raise ValueError(f"p_bar: expected shape [B], got {tuple(p.shape)}")
        return torch.ones_like(p)
    return dar_weights(p, n_refs, gamma=cfg.gamma, beta=cfg.beta, n0=cfg.n0,
                       w_min=cfg.w_min, w_max=cfg.w_max, mode=cfg.mode)
