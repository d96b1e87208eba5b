"""The trainer: the policy, its optimizer and its EMA behind one call, ``update(groups) -> stats``.

The learner is two parts (docs/architecture.md, "The learner"): the control plane
(services/learner/rl_recipe.py) admits tasks, consumes and settles groups, computes the training
signals over the whole batch (DRS, GDPO or GRPO, DAR: DAR normalises over the batch, so the
signals are never computed per shard), publishes weights and keeps the checkpoints; the trainer
turns whole groups with their signals into optimizer steps and nothing else. A GRPO group is never
split: :class:`TrainGroup` is the unit each worker gets.

One code path for any worker count: a trainer is one worker of ``world`` (1 when no process group
runs, as in the learner's own process); :meth:`Trainer.update_shard` trains its shard of a batch
(services/learner/parallel.py says how N workers take the step one would), and
:meth:`Trainer.save` / :meth:`Trainer.load` write and read ``torch.distributed.checkpoint``
folders that any worker count can load.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from common import metrics as M
from common.config import PolicyConfig, RLConfig
from common.policy import GroupRollout, build_policy
from common.policy.sde import kl_std_dev_t, sde_step, step_std
from common.rl import EMA, kl_penalty, ppo_loss
from common.rl.loss import LossStats
from services.learner.parallel import Parallel, TrainShard, minibatch_work, split_batch

__all__ = ["TrainGroup", "Trainer"]


@dataclass
class TrainGroup:
    """One GRPO group as the trainer takes it: the rollout (what to recompute), the advantage of each
    member ``[G]`` and the group's DAR weight (0-d), both computed by the control plane."""
    rollout: GroupRollout
    advantages: torch.Tensor
    dar_weight: torch.Tensor


_STAT_KEYS = [f"losses/{f.name}" for f in fields(LossStats)]


class Trainer:
    """The policy being trained (wrapped for data parallelism when a process group runs), AdamW over
    its trainable parameters, and the EMA when enabled."""

    def __init__(self, policy_cfg: PolicyConfig, rl: RLConfig, policy=None):
        """``policy``: an already built MRIGPolicy of ``policy_cfg`` (e.g. a real architecture with
        random weights in services/learner/trainer_check.py); default: built from the config."""
        torch.manual_seed(rl.seed)
        self.rl = rl
        self.policy = (policy if policy is not None else build_policy(policy_cfg)).train()
        lc = rl.learner
        # before the optimizer and the EMA: FSDP2 replaces the parameters by sharded ones
        self.parallel = Parallel(self.policy.trained_modules(), lc.strategy, lc.param_dtype, lc.activation_checkpointing)
        self.optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=rl.lr, betas=rl.betas,
                                           weight_decay=rl.weight_decay, eps=rl.adam_eps)
        self.last_seconds: list[float] = []  # seconds of the last update (the one worker's)
        self.ema = EMA.from_config(rl.ema, dict(self.policy.named_trainable_parameters())) if rl.ema.enabled else None

    # ---- the loss of one train step of one group ------------------------------------------------
    def step_loss(self, rollout: GroupRollout, j: int, adv: torch.Tensor, w: torch.Tensor):
        """PPO-clip (+ KL) of train step ``j`` of the group: (loss, LossStats) (docs/algorithm.md)."""
        ro = rollout
        x_t, x_next, idx = ro.transition(j)
        # through the wrapper: DDP prepares its gradient reduction and FSDP2 gathers the root's
        # parameters in forward (services/learner/parallel.py)
        out = self.parallel(self.policy.step_log_prob, ro.cond, x_t, x_next, idx, ro.sigmas, ro.params)
        kl = None
        if self.rl.kl.beta > 0:
            dyn, eta = ro.params.dynamics, float(ro.params.noise_level)
            sigma, sigma_next = ro.sigmas[idx], ro.sigmas[idx + 1]
            with torch.no_grad():  # outside the graph: DDP must not expect a backward of this forward
                v_ref = self.parallel(self.policy.reference_velocity, ro.cond, x_t, sigma, mode=self.rl.kl.reference)
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
        """One learner step on the whole batch, as the only worker (in the learner's process: its
        seconds are exported as worker 0's, as a TrainerGroup exports each of its workers')."""
        t0 = time.perf_counter()
        out = self.update_shard(split_batch(groups, 1)[0], step)
        self.last_seconds = [time.perf_counter() - t0]
        M.TRAINER_WORKER_SECONDS.labels("0", "update").observe(self.last_seconds[0])
        return out

    def update_shard(self, shard: TrainShard, step: int) -> dict[str, float]:
        """``ppo_epochs`` x ``minibatches`` optimizer steps over the batch (minibatches of whole groups,
        in an order seeded by ``rl.seed`` and ``step``), training the groups of ``shard``; then the
        EMA. Returns the mean loss statistics over the whole batch (``losses/*``, ``losses/grad_norm``),
        the same on every worker."""
        stats_sum = dict.fromkeys(_STAT_KEYS, 0.0)
        n_evals, grad_norm_sum = 0, 0.0
        params = self.policy.trainable_parameters()
        gen = torch.Generator().manual_seed(self.rl.seed * 1_000_003 + step)
        world = shard.world
        for _epoch in range(self.rl.ppo_epochs):
            order = torch.randperm(shard.n_groups, generator=gen).tolist()
            chunks = [order[i::self.rl.minibatches] for i in range(self.rl.minibatches)]
            for chunk in (c for c in chunks if c):
                self.optimizer.zero_grad(set_to_none=True)
                work, terms = minibatch_work(chunk, shard.terms, shard.owners, shard.rank, world, shard.held)
                for i, w in enumerate(work):
                    g = shard.groups[w.group]
                    with self.parallel.sync(last=i == len(work) - 1):
                        loss, st = self.step_loss(g.rollout, w.step, g.advantages, g.dar_weight)
                        # DDP and FSDP2 average over the workers: x world gives the one-worker sum / terms
                        ((loss * (w.weight * world)) / terms).backward()
                    if w.weight:
                        for k, v in st.as_dict(prefix="losses/").items():
                            stats_sum[k] += v
                        n_evals += 1
                grad_norm_sum += self._clip_gradients(params) * terms
                self.optimizer.step()
        if self.ema is not None:
            self.ema.update(step)
        # the loss statistics summed over the workers; the gradient norm is already the whole batch's
        sums = self.parallel.all_sum([stats_sum[k] for k in _STAT_KEYS] + [float(n_evals)])
        n = max(sums[-1], 1.0)
        out = {k: v / n for k, v in zip(_STAT_KEYS, sums)}
        out["losses/grad_norm"] = grad_norm_sum / n
        return out

    def _clip_gradients(self, params: list[torch.nn.Parameter]) -> float:
        """Clip to ``rl.max_grad_norm``; returns the norm before clipping (over every worker's shard)."""
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads)
        if hasattr(total, "full_tensor"):  # FSDP2: each worker holds a shard of the norm's square sum
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, self.rl.max_grad_norm, total)
        return float(total)

    def measure_communication(self, repeats: int = 5) -> dict[str, float]:
        """The trainable parameters' size and the seconds of one collective over them among the
        workers (scripts/bench_learner_workers.py states a step's communication with it)."""
        numel = sum(int(p.numel()) for p in self.policy.trainable_parameters())  # global sizes, sharded or not
        return {"trainable_bytes": 4.0 * numel, **self.parallel.time_collectives(numel, repeats)}

    # ---- what publishing and checkpoints read and restore -----------------------------------------
    def trainable_state(self) -> bytes:
        """The trainable weights as the weight store publishes them (safetensors bytes). Under FSDP2
        every worker must call it (the shards are gathered)."""
        if self.parallel.strategy != "fsdp2":
            return self.policy.trainable_state()
        full = {n: p.detach().full_tensor() for n, p in self.policy.named_trainable_parameters()}
        return self.policy.trainable_state(full)

    def probe(self) -> list[float]:
        """``MRIGPolicy.probe`` under the trained weights, through the wrapper (under FSDP2 every
        worker calls it: the forward gathers the shards); published with the weights."""
        return self.parallel(self.policy.probe)

    def _dcp_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        model, optim = get_state_dict(self.parallel.root, self.optimizer,
                                      options=StateDictOptions(ignore_frozen_params=True))
        state = {"model": model, "optimizer": optim, "rng": torch.get_rng_state()}
        if self.ema is not None:
            state["ema"] = dict(self.ema.shadow)
            state["ema_updates"] = self.ema.num_updates
        return state

    def save(self, path: str | Path) -> None:
        """Write the trainable weights, AdamW state, EMA shadow and RNG as a
        ``torch.distributed.checkpoint`` folder (every worker calls it; each writes its shard)."""
        import torch.distributed.checkpoint as dcp
        dcp.save(self._dcp_state(), checkpoint_id=str(path))

    def load(self, path: str | Path) -> None:
        """Read a folder :meth:`save` wrote, whatever worker count and strategy wrote it (the tensors
        are resharded to this trainer's layout). Every worker calls it."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        state = self._dcp_state()
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.parallel.root, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))
        torch.set_rng_state(state["rng"])
        if self.ema is not None and "ema" in state:
            with torch.no_grad():
                for n, t in state["ema"].items():
                    if t is not self.ema.shadow[n]:
                        self.ema.shadow[n].copy_(t)
            self.ema.num_updates = int(state["ema_updates"])

    def checkpoint_state(self) -> tuple[bytes, dict, dict[str, torch.Tensor] | None]:
        """(trainable weights, optimizer state, EMA shadow or None) in the one-file layout of
        services/learner/checkpoint.py (one worker only; :meth:`save` is the checkpoint any count
        reads). The optimizer and EMA tensors are the live ones: serialise them before the next update."""
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
