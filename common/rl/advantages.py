"""Group-relative advantages: GRPO and GDPO (docs/algorithm.md §2).

Notation: B groups (one prompt/task each), G members per group, K reward components.

Missing scores (decision, used by both estimators)
-------------------------------------------------
* A reward that does not **apply** to a group (e.g. CSD style similarity for a task with no style
  reference) is excluded for that group explicitly via ``applies[k, b] = False``; its values are
  never read. The released code instead fills NaN with the rank-local mean of the reward, which
  puts rank-dependent constants into one group and GDPO then scales that fake variance up to unit
  size (docs/algorithm.md §6, §8).
* A **missing individual score** (NaN in one member, e.g. an unparsable judge answer) is handled
  per member by default (``missing="mask_member"``): the group's mean/std for that reward use the
  members that have a score, and the member without one gets a normalised value of 0 for that
  reward ("no information", the group mean). It therefore adds no variance and takes no share of
  the others' signal. ``missing="drop_reward"`` instead excludes that reward for the whole group
  as soon as one member lacks it. A group left with fewer than two scored members has std 0 and
  contributes 0 for that reward, as any zero-std group does.
* ±inf is always an error: it is a bug upstream, not a missing score.
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from ._checks import as_bool, as_float, check_shape, masked_mean_std

__all__ = ["grpo_advantages", "gdpo_advantages", "zero_std_fraction", "group_normalize"]

Missing = Literal["mask_member", "drop_reward"]


def _finite_or_nan(x: torch.Tensor, name: str) -> None:
    if torch.isinf(x).any():
        raise ValueError(f"{name}: contains ±inf (a missing score must be NaN)")


def group_normalize(x: torch.Tensor, valid: torch.Tensor, eps: float) -> torch.Tensor:
    """(x − mean_g) / max(std_g, eps) over the last dim, over ``valid`` members; invalid -> 0.

    Shapes: x, valid [..., G] -> [..., G]. std is the population std (ddof 0), as the reference.
    """
    x = _centre(x, valid)
    mean, std, _ = masked_mean_std(x, valid, dim=-1)
    z = (torch.where(valid, x, mean) - mean) / std.clamp_min(eps)
    return torch.where(valid, z, torch.zeros_like(z))


def _centre(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Subtract each group's first scored value (the result is shift-invariant anyway).

    Without this a constant group such as [43.52, 43.52, 43.52] gets mean ≠ 43.52 by one ulp and
    the ε floor turns the rounding into advantages of 1e-8 — fake variance from arithmetic.
    """
    first = torch.argmax(valid.to(torch.uint8), dim=-1, keepdim=True)
    pivot = torch.gather(torch.where(valid, x, torch.zeros_like(x)), -1, first)
    return x - pivot


def grpo_advantages(rewards: Any, eps: float = 1e-6, global_std: bool = False) -> torch.Tensor:
    """GRPO advantage  A_{b,i} = (R_{b,i} − mean_g R_b) / max(std_g R_b, ε)   (Flow-GRPO / DeepSeekMath).

    Args:
        rewards: [B, G] aggregated reward per member; NaN = missing (masked per member, A = 0).
        eps: floor of the std.
        global_std: divide by the population std of all scored rewards of the batch instead of the
            group's std (the mean stays the group mean), as the reference's ``global_std``.
    Returns:
        [B, G] advantages, same dtype as ``rewards``.
    """
    r = as_float(rewards, "rewards")
    if r.dim() != 2:
        raise ValueError(f"rewards: expected shape [B, G], got {tuple(r.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    _finite_or_nan(r, "rewards")
    x = r.double()
    valid = ~torch.isnan(x)
    if not global_std:
        return group_normalize(x, valid, eps).to(r.dtype)
    # the batch std must see the raw spread across groups, so it is taken before per-group centring
    _, gstd, _ = masked_mean_std(x.reshape(1, -1), valid.reshape(1, -1), dim=-1)
    x = _centre(x, valid)
    mean, _, _ = masked_mean_std(x, valid, dim=-1)
    a = (torch.where(valid, x, mean) - mean) / gstd.clamp_min(eps)
    return torch.where(valid, a, torch.zeros_like(a)).to(r.dtype)


def gdpo_advantages(
    rewards: Any,
    weights: Any,
    applies: Any | None = None,
    eps: float = 1e-6,
    missing: Missing = "mask_member",
) -> torch.Tensor:
    """GDPO advantage (docs/algorithm.md §2): per-reward group normalisation, weighted sum, batch norm.

        A_k[b,i] = (r_k[b,i] − mean_g r_k[b]) / max(std_g r_k[b], ε)      for k applying to b
        C[b,i]   = Σ_{k : applies[k,b]} w_k · A_k[b,i]
        A[b,i]   = (C[b,i] − mean(C)) / max(std(C), ε)                     over the whole batch

    A group to which no reward applies, or a member with no score in any applying reward, carries
    no information: its advantage is 0 and it is left out of the batch statistics. Every other
    member (of zero-std groups too, as in the reference) takes part in them.

    Args:
        rewards: [K, B, G] per-component scores; NaN = missing score (see module docstring).
            Entries where ``applies`` is False are never read (may hold anything).
        weights: [K] component weights w_k (released: image_similarity 1.0, csd 0.8).
        applies: [K, B] bool, whether reward k applies to group b; None = all apply.
        eps: floor of every std.
        missing: "mask_member" (default) or "drop_reward", see the module docstring.
    Returns:
        [B, G] advantages, same dtype as ``rewards``.
    """
    r = as_float(rewards, "rewards")
    if r.dim() != 3:
        raise ValueError(f"rewards: expected shape [K, B, G], got {tuple(r.shape)}")
    K, B, G = r.shape
    w = as_float(weights, "weights").double()
    check_shape(w, (K,), "weights")
    if not torch.isfinite(w).all():
        raise ValueError("weights: must be finite")
    if applies is None:
        ap = torch.ones(K, B, dtype=torch.bool)
    else:
        ap = as_bool(applies, "applies")
        check_shape(ap, (K, B), "applies")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if missing not in ("mask_member", "drop_reward"):
        raise ValueError(f"missing: expected 'mask_member' or 'drop_reward', got {missing!r}")
    ap = ap.to(r.device)
    x = r.double()
    # Only the entries of applying rewards are inspected: a non-applying reward may hold garbage.
    _finite_or_nan(torch.where(ap[..., None], x, torch.zeros_like(x)), "rewards (where applies)")
    scored = ~torch.isnan(x) & ap[..., None]
    if missing == "drop_reward":
        ap = ap & scored.all(dim=-1)
        scored = scored & ap[..., None]
    z = group_normalize(x, scored, eps)                       # [K, B, G]
    c = (w.to(x.device)[:, None, None] * z).sum(dim=0)        # [B, G]; non-applying terms are 0
    # a member with no score in any applying reward (or a group with no applying reward) carries
    # no information: advantage 0 and out of the batch statistics
    in_batch = scored.any(dim=0)                              # [B, G]
    mean, std, _ = masked_mean_std(c.reshape(1, -1), in_batch.reshape(1, -1), dim=-1)
    a = (c - mean.reshape(())) / std.reshape(()).clamp_min(eps)
    return torch.where(in_batch, a, torch.zeros_like(a)).to(r.dtype)


def zero_std_fraction(rewards: Any, eps: float = 1e-6, applies: Any | None = None) -> float:
    """Fraction of groups whose scored rewards have population std ≤ eps (they give no gradient).

    Args:
        rewards: [..., B, G] (e.g. [B, G] aggregated or [K, B, G] per component); NaN = missing.
        applies: optional bool of shape ``rewards.shape[:-1]``; non-applying groups are not counted.
    Returns:
        a float in [0, 1]; 0.0 when no group is counted.
    """
    r = as_float(rewards, "rewards")
    if r.dim() < 2:
        raise ValueError(f"rewards: expected shape [..., B, G], got {tuple(r.shape)}")
    x = r.double()
    _, std, _ = masked_mean_std(x, ~torch.isnan(x), dim=-1)
    std = std.squeeze(-1)
    counted = torch.ones_like(std, dtype=torch.bool)
    if applies is not None:
        counted = as_bool(applies, "applies")
        check_shape(counted, tuple(std.shape), "applies")
    n = int(counted.sum())
    return 0.0 if n == 0 else float(((std <= eps) & counted).sum()) / n
