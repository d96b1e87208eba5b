"""What a sampled group carries from a generator to the learner, and what a step recompute returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from common.policy.families import Cond
from common.schemas import SamplingParams

__all__ = ["GroupRollout", "ScoredGroup", "StepOutput"]

# SamplingParams fields a group payload may lack: generators before issue 18 did not send it, and
# rollouts never use it (no CFG in RL, docs/algorithm.md §9)
_PARAMS_OPTIONAL = ("guidance_scale",)


@dataclass
class StepOutput:
    """log p(x_next | x_t) under the current weights. log_prob [B] (per-element mean), mean [B,S,C],
    std: 0-d or [B] (the step Gaussian's s), velocity [B,S,C] (float32, differentiable)."""
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    velocity: torch.Tensor


@dataclass
class GroupRollout:
    """G rollouts of one prompt with its references.

    images: uint8 [G,H,W,3]. Only the T train steps are stored (never a placeholder for the other
    steps): x_t, x_next float32 [G,T,S,C]; step_indices int64 [T] (indices into the schedule);
    log_probs float32 [G,T] (rollout-time log p(x_next | x_t), per-element mean); sigmas float32
    [N+1] (last 0); cond: the group's conditioning (batch 1) needed to recompute the velocity.
    params: the SamplingParams the group was sampled with (the learner reads dynamics and noise_level).
    """
    images: np.ndarray
    x_t: torch.Tensor
    x_next: torch.Tensor
    step_indices: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    cond: Cond
    seed: int
    prompt: str
    n_refs: int
    params: SamplingParams
    roles: list[str] = field(default_factory=list)

    @property
    def group_size(self) -> int:
        return int(self.images.shape[0])

    def transition(self, j: int, members=None):
        """(x_t [B,S,C], x_next [B,S,C], step_index) of train step j for the chosen members."""
        idx = slice(None) if members is None else members
        return self.x_t[idx, j], self.x_next[idx, j], int(self.step_indices[j])

    def to_wire(self) -> dict:
        """Plain dict (str/int/float/list/dict/numpy) for :func:`common.codec.encode`."""
        return {
            "images": np.ascontiguousarray(self.images, dtype=np.uint8),
            "x_t": self.x_t.detach().cpu().float().numpy(),
            "x_next": self.x_next.detach().cpu().float().numpy(),
            "step_indices": self.step_indices.detach().cpu().to(torch.int64).numpy(),
            "log_probs": self.log_probs.detach().cpu().float().numpy(),
            "sigmas": self.sigmas.detach().cpu().float().numpy(),
            "cond": self.cond.to_wire(),
            "seed": int(self.seed), "prompt": self.prompt, "n_refs": int(self.n_refs),
            "params": {**self.params.model_dump(), "train_steps": list(self.params.train_steps)},
            "roles": list(self.roles),
        }

    @classmethod
    def from_wire(cls, d: dict) -> "GroupRollout":
        from common.codec import to_torch
        need = ("images", "x_t", "x_next", "step_indices", "log_probs", "sigmas", "cond", "seed", "prompt", "n_refs",
                "params")
        missing = [k for k in need if k not in d]
        if missing:
            raise ValueError(f"group rollout payload lacks {', '.join(missing)}")
        params = d["params"]
        if not isinstance(params, dict):
            raise ValueError(f"group rollout params must be a mapping, got {type(params).__name__}")
        missing = [k for k in SamplingParams.model_fields if k not in params and k not in _PARAMS_OPTIONAL]
        if missing:
            # a default here would silently recompute the log-probs under other dynamics than the sample's
            raise ValueError(f"group rollout params lack {', '.join(missing)}")
        r = cls(images=np.array(d["images"], dtype=np.uint8), x_t=to_torch(d["x_t"]), x_next=to_torch(d["x_next"]),
                step_indices=to_torch(d["step_indices"]), log_probs=to_torch(d["log_probs"]),
                sigmas=to_torch(d["sigmas"]), cond=Cond.from_wire(d["cond"]), seed=int(d["seed"]),
                prompt=str(d["prompt"]), n_refs=int(d["n_refs"]), params=SamplingParams.model_validate(params),
                roles=list(d.get("roles", [])))
        g, t = r.log_probs.shape
        if r.x_t.shape[:2] != (g, t) or r.x_next.shape != r.x_t.shape or r.step_indices.shape != (t,) \
                or r.images.shape[0] != g:
            raise ValueError(f"inconsistent group rollout shapes: x_t {tuple(r.x_t.shape)}, x_next "
                             f"{tuple(r.x_next.shape)}, log_probs {(g, t)}, step_indices {tuple(r.step_indices.shape)}, "
                             f"images {r.images.shape}")
        return r


@dataclass
class ScoredGroup:
    """The blob of one scored group, generator -> learner (its stream entry is a GroupHeader).

    ``rewards[name]`` is component ``name``'s raw scores: per member a score or a list of
    per-reference scores (None: missing), or None when the component does not apply to the task
    (common/rl/signals.py reads them). Whether the scores fit the group is the signals' check: a
    group whose scores cannot be used is dead-lettered as unscorable, one that is not a scored
    group at all (:meth:`from_wire` raises ValueError) as corrupt.
    """
    task_id: str
    rollout: GroupRollout
    rewards: dict[str, list | None]
    record_index: int | None = None

    def to_wire(self) -> dict:
        return {"task_id": self.task_id, "record_index": self.record_index, "rollout": self.rollout.to_wire(),
                "rewards": self.rewards}

    @classmethod
    def from_wire(cls, d) -> "ScoredGroup":
        if not isinstance(d, dict):
            raise ValueError(f"a scored group must be a mapping, got {type(d).__name__}")
        missing = [k for k in ("task_id", "rollout", "rewards") if k not in d]
        if missing:
            raise ValueError(f"scored group lacks {', '.join(missing)}")
        rewards = d["rewards"]
        if not isinstance(rewards, dict) or not all(isinstance(k, str) for k in rewards):
            raise ValueError(f"scored group rewards must map component names to scores, got {type(rewards).__name__}")
        bad = [k for k, v in rewards.items() if v is not None and not isinstance(v, list)]
        if bad:
            raise ValueError(f"scored group rewards {', '.join(bad)}: expected a list of scores per member or None")
        index = d.get("record_index")
        return cls(task_id=str(d["task_id"]), rollout=GroupRollout.from_wire(d["rollout"]), rewards=rewards,
                   record_index=None if index is None else int(index))
