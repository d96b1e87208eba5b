"""N trainer workers as a Ray Train ``TorchTrainer`` group, driven one call at a time by the control plane.

Ray Train places the workers, starts the process group (gloo on the CPU, NCCL on GPUs), and
restarts the whole group when a worker dies (``rl.learner.max_failures``). Its training function
here is a loop that serves the control plane: each worker builds its :class:`Trainer` (one worker
of N: services/learner/parallel.py), joins the :class:`Mailbox`, then runs the commands it gets
(update its shard, hand the gathered weights, save or load a checkpoint) until told to stop.

A restarted group joins the mailbox again under a new generation: whatever the control plane had
asked the lost one fails with :class:`TrainerLost`, and the control plane resumes the new group
from its last checkpoint (services/learner/rl_recipe.py; docs/architecture.md, "The learner").
"""
from __future__ import annotations

import asyncio
import itertools
import os
import logging
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import torch

from common import metrics as M
from common.config import PolicyConfig, RLConfig
from common.placement import role_resources

__all__ = ["TrainerGroup", "TrainerLost", "TrainerGone", "PlacementError", "check_placement"]

log = logging.getLogger("dyref.learner")


class TrainerLost(RuntimeError):
    """The trainer workers died or were restarted before answering: resume from the last checkpoint."""


class TrainerGone(TrainerLost):
    """The trainer worker group failed for good (Ray Train used up ``rl.learner.max_failures``)."""


class PlacementError(RuntimeError):
    """The trainer workers cannot be placed on the Ray cluster (raised at start-up)."""


def check_placement(lc, resources: dict[str, float]) -> None:
    """Fail at start-up when the cluster (``resources``: ``ray.cluster_resources()``) cannot hold
    ``rl.learner.workers`` workers of the configured size at all."""
    for res, each, field in (("CPU", lc.cpus_per_worker, "cpus_per_worker"), ("GPU", lc.gpus_per_worker, "gpus_per_worker")):
        need, have = lc.workers * each, float(resources.get(res, 0.0))
        if need > have + 1e-9:
            raise PlacementError(
                f"rl.learner.workers={lc.workers} x rl.learner.{field}={each:g} needs {need:g} {res}, but the Ray "
                f"cluster has {have:g}: use fewer workers, smaller ones, or a bigger cluster")


def _mailbox_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=64)
    class Mailbox:
        """Commands to every worker and their replies, per generation of the worker group."""

        def __init__(self, world: int):
            self.world = world
            self.generation = 0
            self.joined: set[int] = set()
            self.pids: dict[int, int] = {}
            self.inbox = [asyncio.Queue() for _ in range(world)]
            self.replies: dict[int, dict[int, Any]] = {}
            self.done: dict[int, asyncio.Event] = {}
            self.ready = asyncio.Event()
            self.lost: str | None = None      # why the current generation's pending calls failed
            self.fatal: str | None = None     # the group is gone for good (Ray Train gave up)

        async def join(self, rank: int, pid: int) -> int:
            if rank in self.joined:  # a restarted group: the old generation's calls will never finish
                self._fail_pending(f"trainer worker group restarted (worker {rank} joined again)")
                self.generation += 1
                self.joined = set()
                self.inbox = [asyncio.Queue() for _ in range(self.world)]
                self.ready = asyncio.Event()
            self.joined.add(rank)
            self.pids[rank] = pid
            if len(self.joined) == self.world:
                self.ready.set()
            return self.generation

        async def worker_pids(self) -> list[int]:
            return [self.pids[r] for r in sorted(self.pids)]

        async def wait_ready(self, timeout_s: float) -> tuple[int, str | None]:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout_s)
            except asyncio.TimeoutError:
                return -1, self.fatal
            return self.generation, self.fatal

        def _fail_pending(self, why: str) -> None:
            self.lost = why
            for ev in self.done.values():
                ev.set()

        async def send(self, generation: int, seq: int, commands: list) -> None:
            if generation != self.generation or self.fatal:
                raise RuntimeError(self.fatal or "the trainer worker group was restarted")
            self.lost = None
            self.replies[seq], self.done[seq] = {}, asyncio.Event()
            for rank, cmd in enumerate(commands):
                self.inbox[rank].put_nowait((seq, cmd))

        async def receive(self, rank: int):
            return await self.inbox[rank].get()

        async def reply(self, seq: int, rank: int, value: Any) -> None:
            if seq in self.replies:
                self.replies[seq][rank] = value
                if len(self.replies[seq]) == self.world:
                    self.done[seq].set()

        async def gather(self, seq: int) -> tuple[list | None, str | None]:
            await self.done[seq].wait()
            got = self.replies.pop(seq)
            self.done.pop(seq)
            if len(got) < self.world:
                return None, self.fatal or self.lost or "trainer workers lost"
            return [got[r] for r in range(self.world)], None

        async def fail(self, why: str) -> None:
            self.fatal = why
            self._fail_pending(why)
            self.ready.set()

    return Mailbox


def _serve_control_plane(config: dict) -> None:
    """The training function of every Ray Train worker: build the trainer, then serve commands."""
    import ray
    import ray.train

    from services.learner.trainer import Trainer

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    rl = RLConfig(**config["rl"])
    torch.set_num_threads(max(1, int(rl.learner.cpus_per_worker)))
    mailbox = config["mailbox"]
    try:
        trainer = Trainer(PolicyConfig(**config["policy"]), rl)
    except Exception as e:  # a strategy the model cannot use, weights that do not load: fail start-up now
        ray.get(mailbox.fail.remote(f"trainer worker {rank} could not build its trainer: {type(e).__name__}: {e}"))
        raise
    ray.get(mailbox.join.remote(rank, os.getpid()))
    while True:
        seq, (op, arg) = ray.get(mailbox.receive.remote(rank))
        if op == "stop":
            ray.get(mailbox.reply.remote(seq, rank, (None, 0.0)))
            return
        t0 = time.perf_counter()
        try:
            if op == "update":
                shard, step = arg
                value = trainer.update_shard(ray.get(shard), step)
            elif op == "state":
                state = trainer.trainable_state()  # every worker gathers under FSDP2; rank 0 ships it
                value = state if rank == 0 else None
            elif op == "probe":
                value = trainer.probe()
            elif op == "communication":
                value = trainer.measure_communication(arg)
            elif op == "save":
                trainer.save(arg)
                value = None
            elif op == "load":
                trainer.load(arg)
                value = None
            else:
                raise ValueError(f"unknown trainer command {op!r}")
        except Exception:  # noqa: BLE001 - the control plane gets the traceback; this group is then broken
            value = {"__error__": f"trainer worker {rank}: {traceback.format_exc()}"}
            ray.get(mailbox.reply.remote(seq, rank, (value, time.perf_counter() - t0)))
            raise
        ray.get(mailbox.reply.remote(seq, rank, (value, time.perf_counter() - t0)))


class TrainerGroup:
    """The control plane's handle on ``rl.learner.workers`` trainer workers; the same calls as
    :class:`~services.learner.trainer.Trainer` (``update``, ``trainable_state``, ``save``, ``load``)."""

    def __init__(self, policy_cfg: PolicyConfig, rl: RLConfig, storage: str | Path):
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        lc = rl.learner
        self.policy_cfg, self.rl, self.world = policy_cfg, rl, lc.workers
        check_placement(lc, ray.cluster_resources())
        self._seq = itertools.count(1)
        self.mailbox = _mailbox_class().remote(self.world)
        self.generation = -1  # none ready yet
        self._policy = None
        self._final_state: bytes | None = None  # the weights the workers held when closed
        self.last_seconds: list[float] = []  # each worker's seconds for the last call
        use_gpu = lc.gpus_per_worker > 0
        # on compose and the chart, the learner's own container is the "trainer" node: the workers
        # write their checkpoint shards beside the control plane's (common/placement.py)
        resources = {"CPU": lc.cpus_per_worker, **role_resources("trainer")}
        if use_gpu:
            resources["GPU"] = lc.gpus_per_worker
        self._trainer = TorchTrainer(
            _serve_control_plane,
            train_loop_config={"policy": policy_cfg.model_dump(), "rl": rl.model_dump(), "mailbox": self.mailbox},
            scaling_config=ScalingConfig(num_workers=self.world, use_gpu=use_gpu, resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=f"trainer-{uuid.uuid4().hex[:8]}", storage_path=str(Path(storage).resolve()),
                                 failure_config=FailureConfig(max_failures=lc.max_failures)))
        self._thread = threading.Thread(target=self._fit, name="ray-train-fit", daemon=True)
        self._thread.start()
        self.wait_ready(lc.start_timeout_s)

    def _fit(self) -> None:
        import ray
        try:
            self._trainer.fit()
            why = "the trainer workers stopped"
        except BaseException as e:  # noqa: BLE001 - reported to the control plane through the mailbox
            why = f"the trainer worker group failed for good (rl.learner.max_failures exhausted?): {e}"
        if not ray.is_initialized():  # Ray was shut down under the run: a call now would start a new one
            return
        try:
            ray.get(self.mailbox.fail.remote(why), timeout=30)
        except Exception:  # noqa: BLE001 - the mailbox went with Ray
            pass

    def wait_ready(self, timeout_s: float | None = None) -> int:
        """Block until every worker of the current generation has built its trainer; returns it."""
        import ray
        lc = self.rl.learner
        generation, fatal = ray.get(self.mailbox.wait_ready.remote(timeout_s or lc.start_timeout_s))
        if fatal:
            self.close()
            raise TrainerGone(fatal)
        if generation < 0:
            what = (f"rl.learner.workers={lc.workers} trainer workers ({lc.cpus_per_worker:g} CPU"
                    + (f", {lc.gpus_per_worker:g} GPU" if lc.gpus_per_worker else "") + " each)")
            self.close()  # asks nothing of workers that never started; the run ends with this process
            raise PlacementError(f"{what} were not all placed and started within rl.learner.start_timeout_s="
                                 f"{lc.start_timeout_s:g} s: the cluster's free resources are held by other actors, "
                                 "or building the policy failed (see the Ray Train worker logs)")
        if 0 <= self.generation != generation:
            log.warning("trainer worker group restarted (generation %d)", generation)
        self.generation = generation
        return generation

    def _call(self, op: str, args: list, timeout_s: float | None = None) -> list:
        import ray
        seq = next(self._seq)
        try:
            ray.get(self.mailbox.send.remote(self.generation, seq, [(op, a) for a in args]))
        except ray.exceptions.RayTaskError as e:
            raise TrainerLost(str(e.cause)) from None
        replies, why = ray.get(self.mailbox.gather.remote(seq), timeout=timeout_s)
        if why is not None:
            raise TrainerLost(why)
        values = [v for v, _ in replies]
        self.last_seconds = [s for _, s in replies]
        if op != "stop":
            for rank, seconds in enumerate(self.last_seconds):
                M.TRAINER_WORKER_SECONDS.labels(str(rank), op).observe(seconds)
        errors = [v["__error__"] for v in values if isinstance(v, dict) and "__error__" in v]
        if errors:
            raise TrainerLost(errors[0])
        return values

    def worker_pids(self) -> list[int]:
        """OS pids of the current workers, by rank (operations, and the chaos scenario that kills one)."""
        import ray
        return ray.get(self.mailbox.worker_pids.remote())

    # ---- the Trainer's calls ------------------------------------------------------------------
    def update(self, groups: list, step: int) -> dict[str, float]:
        import ray

        from services.learner.parallel import split_batch
        shards = [ray.put(s) for s in split_batch(groups, self.world)]
        return self._call("update", [(s, step) for s in shards])[0]

    def trainable_state(self) -> bytes:
        return self._call("state", [None] * self.world)[0]

    def probe(self) -> list[float]:
        return self._call("probe", [None] * self.world)[0]

    def measure_communication(self, repeats: int = 5) -> dict[str, float]:
        return self._call("communication", [repeats] * self.world)[0]

    def save(self, path: str | Path) -> None:
        self._call("save", [str(Path(path).resolve())] * self.world)

    def load(self, path: str | Path) -> None:
        self._call("load", [str(Path(path).resolve())] * self.world)

    @property
    def policy(self):
        """A local policy holding the workers' current weights (for evaluation in the control plane)."""
        from common.policy import build_policy
        if self._policy is None:
            self._policy = build_policy(self.policy_cfg)
        self._policy.load_trainable_state(self._final_state if self._final_state is not None else self.trainable_state())
        return self._policy

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the workers (they leave their loop; Ray Train ends the run) and the mailbox."""
        import ray
        try:
            if self.generation >= 0 and self._thread.is_alive():
                self._final_state = self.trainable_state()
                self._call("stop", [None] * self.world, timeout_s=timeout_s)
        except Exception as e:  # noqa: BLE001 - a lost group has nothing left to stop
            log.debug("trainer workers did not answer stop: %s", e)
        # a run that never started its workers (start-up failed) ends with this process's Ray
        # session; one that did ends once they return
        self._thread.join(timeout_s if self.generation >= 0 else 5.0)
        if ray.is_initialized():
            try:
                ray.kill(self.mailbox)
            except Exception:  # noqa: BLE001 - already gone
                pass
