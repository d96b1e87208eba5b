"""KL penalty between the policy's and the reference policy's SDE step (docs/algorithm.md §4).

σ_t = the step's ``std_dev_t`` (``common.policy.sde.kl_std_dev_t``, one formula per dynamics) and
s = the step's std (``common.policy.sde.step_std``): the step is x' ~ N(μ, s²I), with
s = σ_t·√|dt| for flow-sde and s = σ_t for the other dynamics. Means are over all non-batch
elements, one value per sample:

    "v"        KL_b = mean((v_θ − v_ref)²) / (2σ_t² + 1e-7)      released default (v-based)
    "mean"     KL_b = mean((μ_θ − μ_ref)²) / (2σ_t² + 1e-7)      released x-based form
    "gaussian" KL_b = mean((μ_θ − μ_ref)²) / (2 s²)               exact KL of the two step Gaussians

Neither released form is the exact KL (for flow-sde the x-based one is off by |dt|, the v-based
one also lacks the drift coefficient). "gaussian" is exact per element: both Gaussians share the
std s, so KL = Σ (Δμ)²/(2s²); we take the per-element *mean*, consistent with the
per-element-mean log-prob the ratio uses (a tempered KL, same scale as the ratio's exponent).
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from ._checks import as_float

__all__ = ["kl_penalty", "KL_KINDS"]

KL_KINDS = ("v", "mean", "gaussian")
Kind = Literal["v", "mean", "gaussian"]


def _per_sample(x: Any, name: str, b: int) -> torch.Tensor:
    """Scalar or [B] (or [B, 1, ...]) -> [B]."""
    t = as_float(x, name)
    if t.numel() == 1:
        return t.reshape(()).expand(b)
    if t.shape[0] != b or t.numel() != b:
        raise ValueError(f"{name}: expected a scalar or one value per sample (B={b}), got shape {tuple(t.shape)}")
    return t.reshape(b)


def _sq_mean(a: Any, b: Any, names: tuple[str, str]) -> torch.Tensor:
    if a is None or b is None:
        raise ValueError(f"{names[0]} and {names[1]} are required for this KL kind")
    ta, tb = as_float(a, names[0]), as_float(b, names[1])
    if ta.shape != tb.shape or ta.dim() < 1:
        raise ValueError(f"{names[0]} {tuple(ta.shape)} and {names[1]} {tuple(tb.shape)} must have the same [B, ...] shape")
    return (ta - tb.to(ta.dtype)).pow(2).reshape(ta.shape[0], -1).mean(dim=1)


def kl_penalty(
    kind: Kind,
    v_theta: Any | None = None,
    v_ref: Any | None = None,
    mean_theta: Any | None = None,
    mean_ref: Any | None = None,
    std_dev_t: Any = None,
    dt: Any | None = None,
    step_std: Any | None = None,
) -> torch.Tensor:
    """Per-sample KL estimate [B] (formulas in the module docstring).

    Args:
        kind: "v", "mean" or "gaussian".
        v_theta, v_ref: [B, ...] velocity predictions (kind "v").
        mean_theta, mean_ref: [B, ...] step means μ = next_latents_mean (kinds "mean", "gaussian").
        std_dev_t: σ_t, scalar or [B] (``kl_std_dev_t`` of the step's dynamics).
        step_std: s, scalar or [B] (``step_std`` of the step's dynamics); kind "gaussian" uses it.
        dt: σ' − σ, scalar or [B]; its sign is ignored. Kind "gaussian" without ``step_std``
            takes s = σ_t·√|dt|, which is the step std of flow-sde only.
    The reference inputs carry no gradient by construction; gradients flow through the θ inputs.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind: expected one of {KL_KINDS}, got {kind!r}")
    if std_dev_t is None:
        raise ValueError("std_dev_t is required")
    if kind == "v":
        d2 = _sq_mean(v_theta, v_ref, ("v_theta", "v_ref"))
    else:
        d2 = _sq_mean(mean_theta, mean_ref, ("mean_theta", "mean_ref"))
    sig = _per_sample(std_dev_t, "std_dev_t", d2.shape[0]).to(d2)
    if kind in ("v", "mean"):
        return d2 / (2 * sig.pow(2) + 1e-7)
    if step_std is not None:
        s2 = _per_sample(step_std, "step_std", d2.shape[0]).to(d2).pow(2)
    elif dt is None:
        raise ValueError("gaussian KL: step_std or dt is required (s = std_dev_t·sqrt(|dt|) holds for flow-sde only)")
    else:
        s2 = sig.pow(2) * _per_sample(dt, "dt", d2.shape[0]).to(d2).abs()
    if (s2 <= 0).any() or not torch.isfinite(s2).all():
        raise ValueError("gaussian KL needs a noisy step: the step std must be > 0 (an ODE step has no KL)")
    return d2 / (2 * s2)
