"""The trainer: the policy, its optimizer and its EMA behind one call, ``update(groups) -> stats``.

The learner is two parts (docs/architecture.md, "The learner"): the control plane
(services/learner/rl_recipe.py) admits tasks, consumes and settles groups, computes the training
signals over the whole batch (DRS, GDPO or GRPO, DAR: DAR normalises over the batch, so the
signals are never computed per shard), publishes weights and keeps the checkpoints; the trainer
turns whole groups with their signals into optimizer steps and nothing else. A GRPO group is never
split: :class:`TrainGroup` is the unit a scale-out would hand each worker.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import PolicyConfig, RLConfig
from common.policy import GroupRollout, build_policy
from common.policy.sde import kl_std_dev_t, sde_step, step_std
from common.rl import EMA, kl_penalty, ppo_loss

__all__ = ["TrainGroup", "Trainer"]


@dataclass
class TrainGroup:
    """One GRPO group as the trainer takes it: the rollout (what to recompute), the advantage of each
    member ``[G]`` and the group's DAR weight (0-d), both computed by the control plane."""
    rollout: GroupRollout
    advantages: torch.Tensor
    dar_weight: torch.Tensor


class Trainer:
    """The policy being trained, AdamW over its trainable parameters, and the EMA when enabled."""

    def __init__(self, policy_cfg: PolicyConfig, rl: RLConfig):
        torch.manual_seed(rl.seed)
        self.rl = rl
        self.policy = build_policy(policy_cfg).train()
        self.optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=rl.lr, betas=rl.betas,
                                           weight_decay=rl.weight_decay, eps=rl.adam_eps)
        self.ema = EMA.from_config(rl.ema, dict(self.policy.named_trainable_parameters())) if rl.ema.enabled else None

    # ---- the loss of one train step of one group ------------------------------------------------
    def step_loss(self, rollout: GroupRollout, j: int, adv: torch.Tensor, w: torch.Tensor):
        """PPO-clip (+ KL) of train step ``j`` of the group: (loss, LossStats) (docs/algorithm.md)."""
        ro = rollout
        x_t, x_next, idx = ro.transition(j)
        out = self.policy.step_log_prob(ro.cond, x_t, x_next, idx, ro.sigmas, ro.params)
        kl = None
        if self.rl.kl.beta > 0:
            dyn, eta = ro.params.dynamics, float(ro.params.noise_level)
            sigma, sigma_next = ro.sigmas[idx], ro.sigmas[idx + 1]
            with torch.no_grad():
                v_ref = self.policy.reference_velocity(ro.cond, x_t, sigma, mode=self.rl.kl.reference)
                ref = sde_step(dyn, x_t, v_ref, sigma, sigma_next, eta, sigma_max=ro.sigmas[1], prev_sample=x_next)
            # the v/mean kinds divide by the dynamics' own std_dev_t, the exact kind by the step std;
            # they differ by sqrt(|dt|) for flow-sde only (docs/algorithm.md §4)
            std_dev_t = kl_std_dev_t(dyn, sigma, sigma_next, eta, sigma_max=ro.sigmas[1])
            s = step_std(dyn, sigma, sigma_next, eta, sigma_max=ro.sigmas[1])
            kl = kl_penalty(self.rl.kl.kind, v_theta=out.velocity, v_ref=v_ref, mean_theta=out.mean,
                            mean_ref=ref.mean, std_dev_t=std_dev_t, step_std=s)
        return ppo_loss(out.log_prob, ro.log_probs[:, j], adv, w.expand_as(adv), clip_range=self.rl.clip_range,
                        adv_clip=self.rl.adv_clip, kl=kl, kl_beta=self.rl.kl.beta)

    # ---- one learner step -------------------------------------------------------------------------
    def update(self, groups: list[TrainGroup], step: int) -> dict[str, float]:
        """``ppo_epochs`` x ``minibatches`` optimizer steps over ``groups`` (minibatches of whole
        groups, in an order seeded by ``rl.seed`` and ``step``); then the EMA. Returns the mean loss
        statistics (``losses/*``, ``losses/grad_norm``)."""
        stats_sum: dict[str, float] = {}
        n_evals = 0
        params = self.policy.trainable_parameters()
        gen = torch.Generator().manual_seed(self.rl.seed * 1_000_003 + step)
        for _epoch in range(self.rl.ppo_epochs):
            order = torch.randperm(len(groups), generator=gen).tolist()
            chunks = [order[i::self.rl.minibatches] for i in range(self.rl.minibatches)]
            for chunk in (c for c in chunks if c):
                self.optimizer.zero_grad(set_to_none=True)
                terms = sum(groups[b].rollout.step_indices.numel() for b in chunk)
                for b in chunk:
                    g = groups[b]
                    for j in range(g.rollout.step_indices.numel()):
                        loss, st = self.step_loss(g.rollout, j, g.advantages, g.dar_weight)
                        (loss / terms).backward()
                        for k, v in st.as_dict(prefix="losses/").items():
                            stats_sum[k] = stats_sum.get(k, 0.0) + v
                        n_evals += 1
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.rl.max_grad_norm)
                stats_sum["losses/grad_norm"] = stats_sum.get("losses/grad_norm", 0.0) + float(grad_norm) * terms
                self.optimizer.step()
        if self.ema is not None:
            self.ema.update(step)
        return {k: v / max(n_evals, 1) for k, v in stats_sum.items()}

    # ---- what publishing and checkpoints read and restore -----------------------------------------
    def trainable_state(self) -> bytes:
        """The trainable weights as the weight store publishes them (safetensors bytes)."""
        return self.policy.trainable_state()

    def checkpoint_state(self) -> tuple[bytes, dict, dict[str, torch.Tensor] | None]:
        """(trainable weights, optimizer state, EMA shadow or None) for services/learner/checkpoint.py.
        The optimizer and EMA tensors are the live ones: serialise them before the next update."""
        ema = self.ema.state_dict()["shadow"] if self.ema is not None else None
        return self.trainable_state(), self.optimizer.state_dict(), ema

    def restore(self, trainable: bytes, optimizer: dict | None, ema: dict[str, torch.Tensor] | None) -> None:
        """Load what :meth:`checkpoint_state` gave (a checkpoint without optimizer or EMA state keeps
        the fresh ones)."""
        self.policy.load_trainable_state(trainable)
        if optimizer:
            self.optimizer.load_state_dict(optimizer)
        if self.ema is not None and ema is not None:
            self.ema.load_state_dict({"decay": self.rl.ema.decay, "update_interval": self.rl.ema.update_interval,
                                      "warmup": self.rl.ema.warmup, "num_updates": 0, "shadow": ema})
