"""From scored groups to the learner's training signals: DRS -> GDPO/GRPO -> DAR. Pure, no I/O.

Each group carries, per reward component, either None (the reward does not apply: e.g. no style
reference, or no ground-truth target) or a [G][J] list of raw per-target scores (None = missing,
e.g. an unparsable judge answer). The order of operations is the paper's (docs/algorithm.md §1-§3):

    r_k  = DRS(s_kj)  for components with drs=True, else mean_j s_kj        [K, B, G]
    A    = GDPO(r, w, applies)  or  GRPO(sum_k w_k r_k)                      [B, G]
    p̄_g  = mean_i clip(raw_gi, 0, 1), raw = reduce_j s_j of the first drs   [B]
           component (else of the first component); clip before the mean
    w_g  = DAR(p̄_g, n_g)                                                     [B]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .advantages import gdpo_advantages, grpo_advantages
from .dar import apply_dar, group_difficulty
from .drs import apply_drs
from .loss import batch_diagnostics

if TYPE_CHECKING:  # the config sections are only read, by field name
    from common.config import RewardComponent, RLConfig

__all__ = ["BatchSignals", "reward_tensors", "batch_signals"]


@dataclass
class BatchSignals:
    rewards: torch.Tensor        # [K, B, G] reward after DRS (NaN = missing or not applicable)
    raw: torch.Tensor            # [K, B, G] raw reduced similarity (pre-sigmoid)
    applies: torch.Tensor        # [K, B] bool
    advantages: torch.Tensor     # [B, G]
    dar_weights: torch.Tensor    # [B]
    p_bar: torch.Tensor          # [B] difficulty read by DAR
    n_refs: torch.Tensor         # [B]
    names: list[str]
    diagnostics: dict[str, float] = field(default_factory=dict)


def _scores_tensor(scores: Sequence[Sequence[float | None]] | None, g: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """[G][J] list (None = missing) -> (sims [G,J] with 0 at masked places, mask [G,J])."""
    if scores is None:
        return None
    if len(scores) != g:
        raise ValueError(f"reward scores for {len(scores)} images, group has {g}")
    j = max((len(row) for row in scores), default=0)
    if j == 0:
        return None
    sims = torch.zeros(g, j, dtype=torch.float64)
    mask = torch.zeros(g, j, dtype=torch.bool)
    for i, row in enumerate(scores):
        for jj, v in enumerate(row):
            if v is not None and math.isfinite(float(v)):
                sims[i, jj] = float(v)
                mask[i, jj] = True
    return sims, mask


def reward_tensors(groups: Sequence[dict[str, Any]], n_refs: Sequence[int], components: Sequence[RewardComponent],
                   drs_cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """groups[b][name] = [G][J] raw scores or None -> (rewards [K,B,G], raw [K,B,G], applies [K,B])."""
    k_n, b_n = len(components), len(groups)
    if b_n == 0:
        raise ValueError("no groups")
    g = None
    for grp in groups:
        for c in components:
            if grp.get(c.name) is not None:
                g = len(grp[c.name])
                break
        if g:
            break
    if g is None:
        raise ValueError("no reward applies to any group of the batch")
    rewards = torch.full((k_n, b_n, g), float("nan"), dtype=torch.float64)
    raw = torch.full_like(rewards, float("nan"))
    applies = torch.zeros(k_n, b_n, dtype=torch.bool)
    for b, grp in enumerate(groups):
        for k, c in enumerate(components):
            st = _scores_tensor(grp.get(c.name), g)
            if st is None:
                continue
            sims, mask = st
            applies[k, b] = bool(mask.any())
            if not applies[k, b]:
                continue
            if c.drs:
                r, s = apply_drs(drs_cfg, sims, torch.full((g,), float(n_refs[b]), dtype=torch.float64), mask=mask)
            else:
                cnt = mask.sum(-1)
                s = torch.where(cnt > 0, (sims * mask).sum(-1) / cnt.clamp_min(1), torch.full((g,), float("nan"), dtype=torch.float64))
                r = s
            rewards[k, b], raw[k, b] = r, s
    return rewards, raw, applies


def batch_signals(groups: Sequence[dict[str, Any]], n_refs: Sequence[int], components: Sequence[RewardComponent],
                  rl: RLConfig) -> BatchSignals:
    """B scored groups -> advantages [B, G] and DAR weights [B] (formulas in the module docstring).

    groups[b][name]: [G][J] raw scores (None = missing) or None (reward k does not apply to b);
    n_refs: [B] reference counts (DRS slope, DAR count factor). Raises ValueError when the batch
    cannot be scored (e.g. a DRS slope k(n) <= 0 for some n, scores for the wrong group size);
    the learner then finds and dead-letters the group at fault.
    """
    rewards, raw, applies = reward_tensors(groups, n_refs, components, rl.drs)
    weights = torch.tensor([c.weight for c in components], dtype=torch.float64)
    if rl.advantage == "gdpo":
        adv = gdpo_advantages(rewards, weights, applies, eps=rl.adv_eps)
    else:
        # GRPO on the weighted sum over the rewards that apply; a member missing any applying
        # reward is masked (NaN) rather than scored with a partial sum
        contrib = torch.where(applies[..., None], rewards * weights[:, None, None], torch.zeros_like(rewards))
        missing = (applies[..., None] & torch.isnan(rewards)).any(0)
        total = torch.where(missing, torch.full_like(contrib[0], float("nan")), contrib.nan_to_num(0.0).sum(0))
        adv = grpo_advantages(total, eps=rl.adv_eps, global_std=rl.global_std)
    # DAR difficulty: the raw similarity of the first DRS component (the paper's sim_raw), else of
    # the first component, each member clipped to [0, 1] before the group mean (the released
    # order); a group where it does not apply gets the batch's mean difficulty
    k_dar = next((k for k, c in enumerate(components) if c.drs), 0)
    p_bar = group_difficulty(raw[k_dar])
    if torch.isnan(p_bar).all():
        p_bar = torch.full_like(p_bar, 0.5)
    p_bar = torch.where(torch.isnan(p_bar), torch.nanmean(p_bar), p_bar)
    n = torch.tensor([float(x) for x in n_refs], dtype=torch.float64)
    w = apply_dar(rl.dar, p_bar, n)
    diag = batch_diagnostics(rewards, w, eps=rl.adv_eps, applies=applies)
    return BatchSignals(rewards, raw, applies, adv.float(), w.float(), p_bar.float(), n, [c.name for c in components], diag)
