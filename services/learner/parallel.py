"""Data-parallel training: which worker trains which group, and PyTorch's DDP / FSDP2 around the policy.

docs/architecture.md, "The learner", says why the split is by whole groups: the control plane
computes the advantages and DAR weights over the whole batch, then hands each worker whole GRPO
groups. What makes N workers take the same optimizer step as one:

- every worker walks the same minibatches (same seeded order), and trains, in each, the groups it
  owns; the loss of each train step is scaled by ``world / terms`` (terms = train steps of the
  whole minibatch), and DDP and FSDP2 average gradients over the workers, so the summed gradient
  is the one-worker ``sum(loss) / terms``;
- DDP and FSDP2 need every worker to run the same number of forward (FSDP2) and gradient-syncing
  backward (both) passes, so a worker with fewer train steps in a minibatch pads with passes of
  one of its own steps at weight 0 (gradient exactly 0; counted in no statistic).

The planning is pure (:func:`assign_groups`, :func:`minibatch_work`); :class:`Parallel` is the
wrapping, built only where a process group is running.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

__all__ = ["assign_groups", "minibatch_work", "WorkItem", "TrainShard", "split_batch", "Parallel",
           "repeated_blocks", "StrategyError"]


class StrategyError(ValueError):
    """A sharding strategy this policy cannot use (raised at start-up, naming rl.learner.strategy)."""


def assign_groups(terms: list[int], world: int) -> list[int]:
    """The worker that trains each group: greedy longest-first onto the least-loaded worker (ties to
    the lower rank), so the train steps per worker differ by at most the largest group's."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    load = [0] * world
    owners = [0] * len(terms)
    for b in sorted(range(len(terms)), key=lambda b: (-terms[b], b)):
        r = min(range(world), key=lambda r: (load[r], r))
        owners[b] = r
        load[r] += terms[b]
    return owners


@dataclass(frozen=True)
class WorkItem:
    group: int       # index of the group in the batch
    step: int        # which of the group's train steps
    weight: float    # 1 for a real term, 0 for a padding pass


def minibatch_work(chunk: list[int], terms: list[int], owners: list[int], rank: int, world: int,
                   held: int) -> tuple[list[WorkItem], int]:
    """(this worker's passes over ``chunk``, padded to the busiest worker's count; the train steps of
    the whole chunk). Padding repeats this worker's first term of the chunk, else the first step of
    ``held``, a group this worker holds (its own, or one it was given only to pad with)."""
    mine = [WorkItem(b, j, 1.0) for b in chunk if owners[b] == rank for j in range(terms[b])]
    width = max(sum(terms[b] for b in chunk if owners[b] == r) for r in range(world))
    if len(mine) < width:
        pad = mine[0] if mine else WorkItem(held, 0, 0.0)
        mine += [WorkItem(pad.group, pad.step, 0.0)] * (width - len(mine))
    return mine, sum(terms[b] for b in chunk)


@dataclass
class TrainShard:
    """What one worker gets for a learner step: the groups it trains (by batch index), plus what it
    must know of the whole batch to walk the same minibatches as the others."""
    groups: dict[int, "object"]          # batch index -> services.learner.trainer.TrainGroup
    terms: list[int]                     # train steps of every group of the batch
    owners: list[int]                    # worker of every group of the batch
    rank: int = 0
    world: int = 1

    @property
    def n_groups(self) -> int:
        return len(self.terms)

    @property
    def held(self) -> int:
        """A group this worker holds, to pad with."""
        return min(self.groups)


def split_batch(groups: list, world: int) -> list[TrainShard]:
    """One shard per worker: each group whole on its owner; a worker that owns none (a batch smaller
    than the worker count after unscorable groups were dropped) gets group 0 as filler."""
    terms = [int(g.rollout.step_indices.numel()) for g in groups]
    owners = assign_groups(terms, world)
    shards = []
    for r in range(world):
        own = {b: g for b, g in enumerate(groups) if owners[b] == r} or {0: groups[0]}  # pads only
        shards.append(TrainShard(own, terms, owners, r, world))
    return shards


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks FSDP2 shards one by one: the members of every ``ModuleList`` whose members hold
    parameters (transformer_blocks, single_transformer_blocks, a text encoder's layers), outermost
    lists only."""
    out: list[torch.nn.Module] = []
    taken: list[str] = []
    for name, m in module.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue
        if isinstance(m, torch.nn.ModuleList) and len(m) and all(any(True for _ in b.parameters()) for b in m):
            out.extend(m)
            taken.append(name)
    return out


class _Calls(torch.nn.Module):
    """The trained modules under one root whose ``forward`` runs a given function: DDP and FSDP2 hook
    ``forward`` (DDP prepares its gradient reduction there, FSDP2 gathers the root's parameters), and
    the policy is called through its own methods, so every call goes through here."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        super().__init__()
        for name, m in modules.items():
            self.add_module(name, m)

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


class Parallel:
    """PyTorch's data parallelism around the policy's trained modules.

    No process group: the modules as they are (the learner's own one-worker trainer). In a process
    group (of any size, one included: services/learner/trainer_check.py measures the wrapping on
    one device) ``ddp``: DistributedDataParallel;
    gradients sync only on the last backward of a minibatch (``no_sync`` before). ``fsdp2``:
    ``fully_shard`` on every repeated block, then on the root; parameters in ``param_dtype``,
    gradients reduced in fp32; gradients reduce-scatter on every backward (sharded accumulation:
    the memory FSDP2 is for).
    """

    def __init__(self, modules: dict[str, torch.nn.Module], strategy: str = "ddp", param_dtype: str = "fp32",
                 activation_checkpointing: bool = False):
        import torch.distributed as dist
        grouped = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if grouped else 1
        self.rank = dist.get_rank() if grouped else 0
        self.strategy = strategy if grouped else "none"
        root = _Calls(modules)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            self.model = DistributedDataParallel(root)
        elif self.strategy == "fsdp2":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            blocks = [b for m in modules.values() for b in repeated_blocks(m)]
            if not blocks:
                raise StrategyError("rl.learner.strategy=fsdp2: the policy's trained modules have no repeated "
                                    "blocks (ModuleList of layers) to shard; use ddp")
            if activation_checkpointing:
                from torch.distributed._composable import checkpoint
                for b in blocks:
                    checkpoint(b)
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if param_dtype == "bf16" else None,
                                      reduce_dtype=torch.float32)
            for b in blocks:
                fully_shard(b, mp_policy=mp)
            fully_shard(root, mp_policy=mp)
            self.model = root
        elif self.strategy == "none":
            self.model = root
        else:
            raise StrategyError(f"rl.learner.strategy: unknown strategy {strategy!r} (ddp or fsdp2)")
        self.root = root

    def __call__(self, fn, *args, **kwargs):
        return self.model(fn, *args, **kwargs)

    def sync(self, last: bool):
        """Context of one backward pass: DDP reduces gradients only on the last of a minibatch."""
        if self.strategy == "ddp" and not last:
            return self.model.no_sync()
        return nullcontext()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum of each value over the workers (float64 on the CPU: statistics, not gradients)."""
        if self.strategy == "none":
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def time_collectives(self, numel: int, repeats: int = 5) -> dict[str, float]:
        """Median seconds of one all-reduce and of one all-gather of ``numel`` fp32 values among the
        workers (0 for one worker): what a step costs in communication per gradient sync (DDP:
        one all-reduce of the trainable gradients per minibatch; FSDP2: an all-gather of the
        parameters per forward and per backward, and a reduce-scatter of the gradients)."""
        if self.strategy == "none":
            return {"all_reduce_s": 0.0, "all_gather_s": 0.0}
        import statistics
        import time

        import torch.distributed as dist
        dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
        x = torch.ones(numel, device=dev)
        shard = torch.ones(-(-numel // self.world), device=dev)
        out_g = torch.empty(shard.numel() * self.world, device=dev)
        times = {"all_reduce_s": [], "all_gather_s": []}
        for _ in range(repeats + 1):  # the first of each is a warm-up
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(x)
            if dev == "cuda":
                torch.cuda.synchronize()
            times["all_reduce_s"].append(time.perf_counter() - t0)
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_gather_into_tensor(out_g, shard)
            if dev == "cuda":
                torch.cuda.synchronize()
            times["all_gather_s"].append(time.perf_counter() - t0)
        return {k: statistics.median(v[1:]) for k, v in times.items()}
