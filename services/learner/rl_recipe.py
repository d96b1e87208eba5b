"""The RL recipe (stage 2): admit tasks, consume scored groups, DRS -> GDPO -> DAR -> PPO + KL, publish.

Written top to bottom like a torchtune recipe: :meth:`RLRecipe.setup`, then :meth:`RLRecipe.train`
which loops admit -> consume -> update -> publish -> checkpoint. The algorithm is the pure
functions of common/rl (composed by common.rl.signals); this file is the learner's control plane and
does the I/O around them. The policy, its optimizer and the loss live behind
services/learner/trainer.py (``update(groups) -> stats``), which gets whole groups with their signals.

Accounting (exactly once): every admitted task ends as one of consumed / dropped_stale /
dead-lettered (a corrupt group, or one whose training signals cannot be computed). Counters live in one Redis hash, incremented in the same MULTI/EXEC as the XACK
that settles the group, so a crash can never count a group twice or lose its count.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import torch

from common import metrics as M
from common.codec import CodecError, decode, encode
from common.config import DyRefConfig
from common.policy import GroupRollout, ScoredGroup
from common.rl import BatchSignals, admission_capacity, batch_signals, calibrate_tau, is_stale, version_lag
from common.placement import role_resources
from common.schemas import GroupHeader, SamplingParams
from common.transport import (Entry, Keys, RedisFull, WeightStore, connect, group_queue, retry_on_oom,
                              task_queue)
from common.transport.direct import source_name, start_weight_source
from services.learner.audit import check_ledger, read_audit
from services.learner.checkpoint import LearnerState, load_latest, save_checkpoint
from services.learner.tasks import TaskSource
from services.learner.trainer import Trainer, TrainGroup
from services.learner.workers import TrainerGroup, TrainerLost

__all__ = ["RLRecipe", "ConsumedGroup"]

log = logging.getLogger("dyref.learner")
HISTORY_KEEP = 5000  # per-step scalars kept for reports (a soak run must not grow memory or checkpoints)


@dataclass
class ConsumedGroup:
    entry: Entry
    header: GroupHeader
    rollout: GroupRollout
    rewards: dict
    lag: int


class RLRecipe:
    def __init__(self, cfg: DyRefConfig, redis_url: str, source: TaskSource, learner_id: str = "learner-0"):
        self.cfg, self.redis_url, self.source, self.learner_id = cfg, redis_url, source, learner_id
        self.rl = cfg.rl

    # ---- setup ---------------------------------------------------------------------------------
    @property
    def policy(self):
        """The policy being trained (the trainer's)."""
        return self.trainer.policy

    def setup(self) -> "RLRecipe":
        if self.rl.learner.weight_transport == "direct" and not ray.is_initialized():
            raise RuntimeError("rl.learner.weight_transport=direct: the learner must run in the Ray cluster of "
                               "its consumers (the weights are sent from a Ray actor); use 'redis' otherwise")
        self.ckpt_dir = Path(self.rl.checkpoint_dir)
        if self.rl.learner.workers > 1:  # Ray Train workers (services/learner/workers.py)
            self.trainer = TrainerGroup(self.cfg.policy, self.rl, storage=self.ckpt_dir / "ray-train")
        else:
            self.trainer = Trainer(self.cfg.policy, self.rl)
        self.r = connect(self.redis_url, self.cfg.redis, service="learner")
        for reason in ("stale", "corrupt", "unscorable"):
            M.GROUPS_DROPPED.labels(reason)  # exported as 0 until the first drop
        self.keys = Keys(self.cfg.redis.namespace)
        self.tasks = task_queue(self.r, self.keys, self.cfg.redis)
        self.groups = group_queue(self.r, self.keys, self.cfg.redis)
        self.tasks.ensure_group()
        self.groups.ensure_group()
        self.weights = WeightStore(self.r, self.keys, keep=self.cfg.redis.weights_keep,
                                   chunk_bytes=self.cfg.redis.weights_chunk_mb * 2**20)
        self.weight_source = None  # the direct path's actor (common/transport/direct.py)
        if self.rl.learner.weight_transport == "direct":
            self.weight_source = start_weight_source(self.keys.namespace, keep=self.cfg.redis.weights_keep,
                                                     resources=role_resources("trainer"))
        self.state = LearnerState(run_id=uuid.uuid4().hex[:8])
        ckpt = load_latest(self.ckpt_dir)
        if ckpt is not None:
            self._restore(ckpt)
            self.state = ckpt.state
            log.info("resumed from %s at step %d, version %d", ckpt.path, self.state.step, self.state.version)
        # the ledger (audit hash) names the run id its task ids carry. This learner's run is the one
        # its checkpoint folder records (written below, before any step): it continues that ledger,
        # and never adopts another run's, whose tasks and groups were sampled with other weights
        run_file = self.ckpt_dir / "run_id"
        local = run_file.read_text().strip() if run_file.is_file() else (self.state.run_id if ckpt else None)
        ledger = self.r.hget(self.keys.audit, "run_id")
        if ledger is not None:
            ledger = ledger.decode()
            if ledger != local:
                raise RuntimeError(
                    f"Redis namespace {self.keys.namespace!r} holds the ledger of run {ledger}, not this run's "
                    f"({local or 'a new run'} in {self.ckpt_dir}); use another redis.namespace, or the checkpoint "
                    f"folder of run {ledger} to resume it")
            self.state.run_id = ledger
        elif ckpt is not None and self.state.step > 0:
            # Redis lost the run (restart without persistence): a new ledger under new task ids, so a
            # late group of a task of the lost ledger is recognised as foreign, not counted
            old, self.state.run_id = self.state.run_id, uuid.uuid4().hex[:8]
            log.warning("Redis holds no ledger for run %s at step %d (restarted without persistence?): the "
                        "accounting restarts at zero under run id %s", old, self.state.step, self.state.run_id)
        elif local:
            self.state.run_id = local
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        run_file.write_text(self.state.run_id)
        self.r.hsetnx(self.keys.audit, "run_id", self.state.run_id)
        self._admitted_floor = 0  # tasks this learner has seen admitted: the ledger never goes below it
        self._admission_paused = False
        self._publish_resumed()
        self.sampling = SamplingParams.from_config(self.cfg.policy)
        # steps a dead learner took after its last checkpoint were lost with its model: so are their groups
        self.rolled_back = self._roll_back_unsaved_steps(new_ledger=ledger is None)
        # entries this learner had read but not settled before a restart: take them back now
        self._recovered, _ = self.groups.reclaim(self.learner_id, min_idle_ms=0)
        return self

    def _restore(self, ckpt) -> None:
        if ckpt.trainer_dir is not None:
            self.trainer.load(ckpt.trainer_dir)
        elif isinstance(self.trainer, Trainer):  # the one-file layout of earlier versions
            self.trainer.restore(ckpt.trainable, ckpt.optimizer, ckpt.ema)
        else:
            raise RuntimeError(f"checkpoint {ckpt.path} has the one-file layout of an earlier version, which only "
                               "one trainer worker reads: resume it with rl.learner.workers=1 (its next checkpoint "
                               "can then be resumed on any count)")

    def _publish_resumed(self) -> None:
        """Publish the weights this learner resumed with, under a version never used before; first
        check that Redis can hold ``redis.weights_keep`` versions of them (start-up, not mid-run)."""
        data = self.trainer.trainable_state()
        problem = self.weights.check_room(len(data)) if self.weight_source is None else None  # direct: not in Redis
        if problem:
            raise RuntimeError(problem)
        latest = self.weights.latest()
        if latest is None or latest.version != self.state.version:
            # never reuse a version number: a newer one may already be served with other weights
            if latest is not None and latest.version > self.state.version:
                self.state.version = latest.version + 1
            self.publish(bump=False, data=data)

    def _resume_trainer(self, why: str) -> None:
        """The trainer workers were lost mid-run (a worker died; Ray Train restarted the group): the
        new group takes the last checkpoint, and the control plane goes back to that checkpoint as a
        restarted learner does (setup): the steps after it are rolled back, the batch in hand is
        taken back from the stream, nothing is lost or counted twice. A group lost again while it
        resumes is resumed again; one Ray Train gave up on raises TrainerGone."""
        while True:
            M.TRAINER_RESTARTS.inc()
            log.warning("trainer workers lost at step %d: %s", self.state.step, why.strip().splitlines()[-1][:300])
            try:
                self.trainer.wait_ready()
                ckpt = load_latest(self.ckpt_dir)
                if ckpt is not None:
                    self._restore(ckpt)
                break
            except TrainerGone:
                raise
            except TrainerLost as e:
                why = str(e)
        run_id, version = self.state.run_id, self.state.version
        self.state = ckpt.state if ckpt is not None else LearnerState()  # none yet: the starting weights
        # the resumed weights are new to the generators: a version never published before
        self.state.run_id, self.state.version = run_id, max(self.state.version, version) + 1
        log.warning("trainer workers resumed from %s; the learner is back at step %d",
                    ckpt.path if ckpt else "the starting weights", self.state.step)
        self.rolled_back += self._roll_back_unsaved_steps(new_ledger=False)
        self._recovered, _ = self.groups.reclaim(self.learner_id, min_idle_ms=0)
        self.publish(bump=False)  # a loss here is caught by the loop and resumed again

    def close(self) -> None:
        """Stop the trainer workers (a one-process trainer has none); :attr:`policy` keeps the last weights."""
        if isinstance(self.trainer, TrainerGroup):
            self.trainer.close()

    def _roll_back_unsaved_steps(self, new_ledger: bool) -> int:
        """Groups consumed by steps after the checkpoint this learner resumed from (the learner that
        took them died before checkpointing them): off `consumed`, counted `rolled_back`, their
        consumed marks removed and their tasks re-admitted, all in one transaction, so the ledger's
        `consumed` is what the resumed model was trained on. Returns the groups rolled back."""
        logged = {int(k): json.loads(v) for k, v in self.r.hgetall(self.keys.step_groups).items()}
        if new_ledger:  # a ledger Redis lost, or none yet: nothing of it to roll back
            if logged:
                self.r.delete(self.keys.step_groups)
            return 0
        lost = sorted(k for k in logged if k > self.state.step)
        groups = [g for k in lost for g in logged[k]]
        settled = [g for g in groups if self.r.exists(self.keys.consumed(g["group_id"]))]
        pipe = self.r.pipeline(transaction=True)
        for g in settled:  # unsettled ones are still pending in the group stream: reclaimed and trained anew
            n = int(g["task_id"].rsplit("-", 1)[1])
            task = self.source.task(n, self.state.run_id, self.state.version, self.rl.group_size, self.sampling)
            blob_key = self.keys.blob("task", task.task_id)
            pipe.set(blob_key, encode(task.model_dump()), ex=self.tasks.blob_ttl_s)
            pipe.xadd(self.tasks.stream, {"task_id": task.task_id, "policy_version": str(task.policy_version),
                                          "blob_key": blob_key}, maxlen=self.tasks.maxlen, approximate=True)
            pipe.delete(self.keys.consumed(g["group_id"]))
        if settled:
            pipe.hincrby(self.keys.audit, "consumed", -len(settled))
            pipe.hincrby(self.keys.audit, "rolled_back", len(settled))
        if logged:
            pipe.hdel(self.keys.step_groups, *map(str, logged))
        pipe.execute()
        if settled:
            log.warning("rolled back %d group(s) of step(s) %s, taken after the last checkpoint (step %d) by a "
                        "learner or trainer workers that died: their tasks are admitted again", len(settled), lost, self.state.step)
        return len(settled)

    # ---- accounting ----------------------------------------------------------------------------
    def audit(self) -> dict[str, int]:
        return read_audit(self.r, self.keys, self.cfg.redis)

    # ---- admit ---------------------------------------------------------------------------------
    def admit(self) -> int:
        """Top the task stream up to the staleness-bounded capacity; returns tasks admitted."""
        cap = admission_capacity(self.rl.max_staleness, self.rl.groups_per_step)
        counts = self.audit()
        check_ledger(counts, self._admitted_floor)
        self._admitted_floor = counts["admitted"]
        free = cap - counts["in_flight"]
        for i in range(max(0, free)):
            n = counts["admitted"] + i  # one learner per namespace: nobody else admits
            task = self.source.task(n, self.state.run_id, self.state.version, self.rl.group_size, self.sampling)
            try:
                # the task and its count land in one transaction: never a counted task that does not exist
                self.tasks.add({"task_id": task.task_id, "policy_version": task.policy_version},
                               blob=encode(task.model_dump()), blob_key=self.keys.blob("task", task.task_id),
                               count_in=(self.keys.audit, "admitted"), oom_wait_s=0)
            except RedisFull as e:
                if not self._admission_paused:  # back-pressure: consume (and free memory) first
                    log.warning("admission paused: %s", e)
                self._admission_paused = True
                return i
            self._admission_paused = False
            self._admitted_floor = n + 1
            M.TASKS_ADMITTED.inc()
        return max(0, free)

    # ---- consume -------------------------------------------------------------------------------
    def _settle(self, entry: Entry, outcome: str, group_id: str) -> None:
        """Ack a group entry, mark its id consumed and count its outcome, in one transaction.

        _accept already refused ids that were marked, and only this learner marks them, so the
        SET NX here is always the first one.
        """
        self.groups.ack(entry, mark_key=self.keys.consumed(group_id), mark_ttl_s=self.cfg.redis.dedup_ttl_s,
                        count_in=(self.keys.audit, outcome))

    def _accept(self, entry: Entry, seen: set[str]) -> ConsumedGroup | None:
        try:
            header = GroupHeader.model_validate_json(entry.fields["header"])
        except (KeyError, ValueError) as e:
            self.groups.dead_letter(entry, f"bad group header: {e}")
            return None
        if not header.task_id.startswith(f"{self.state.run_id}-"):
            # a task of a ledger Redis has lost (see setup): not admitted here, so not counted as a task
            self.groups.ack(entry, count_in=(self.keys.audit, "foreign"))
            M.GROUPS_DROPPED.labels("foreign").inc()
            return None
        if header.group_id in seen or self.r.exists(self.keys.consumed(header.group_id)):
            self.groups.ack(entry, count_in=(self.keys.audit, "duplicate"))  # redelivered or redone: counted once already
            M.GROUPS_DUPLICATE.inc()
            return None
        lag = version_lag(self.state.version, header.policy_version)
        if is_stale(self.state.version, header.policy_version, self.rl.max_staleness):
            self._settle(entry, "dropped_stale", header.group_id)
            M.GROUPS_DROPPED.labels("stale").inc()
            return None
        try:
            blob = self.groups.blob(entry)
            if blob is None:
                raise CodecError("group blob is missing (expired or never written)")
            scored = ScoredGroup.from_wire(decode(blob, max_bytes=self.cfg.redis.max_payload_mb * 2**20))
        except (CodecError, KeyError, ValueError, TypeError) as e:
            self.groups.dead_letter(entry, f"corrupt group payload: {e}")
            M.GROUPS_DROPPED.labels("corrupt").inc()
            return None
        seen.add(header.group_id)
        return ConsumedGroup(entry, header, scored.rollout, scored.rewards, lag)

    def consume(self, n: int, should_stop: Callable[[], bool] = lambda: False, timeout_s: float = 600.0) -> list[ConsumedGroup]:
        """Block until `n` fresh, complete groups are in hand (admitting as slots free up)."""
        out: list[ConsumedGroup] = []
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            if should_stop() or time.monotonic() > deadline:
                break
            self.admit()
            entries = self._recovered[: n - len(out)]
            self._recovered = self._recovered[len(entries):]
            if not entries:
                entries = self.groups.read(self.learner_id, count=n - len(out), block_ms=200)
            if not entries:
                # never its own entries: those are this batch's, in hand while it waits for the rest
                # (retaking them counted each a `duplicate` whenever a batch took over claim_idle_ms)
                entries, _dead = self.groups.reclaim(self.learner_id, count=n - len(out), skip_own=True)
            for e in entries:
                g = self._accept(e, seen)
                if g is not None:
                    out.append(g)
        return out

    # ---- signals -------------------------------------------------------------------------------
    def _batch_signals(self, batch: list[ConsumedGroup]) -> BatchSignals:
        return batch_signals([g.rewards for g in batch], [g.header.n_refs for g in batch],
                             self.cfg.rewards.components, self._signal_config(batch))

    def _signal_config(self, batch: list[ConsumedGroup]):
        """The RL section the signals use: with ``drs.tau: auto``, τ is calibrated once, on the first
        batch (sampled by the starting policy), and kept in the learner state and run.json."""
        drs = self.rl.drs
        if not (drs.enabled and drs.tau == "auto"):
            return self.rl
        if self.state.drs_tau is None:
            raw = [v for g in batch for c in self.cfg.rewards.components if c.drs and g.rewards.get(c.name)
                   for row in g.rewards[c.name] for v in row if isinstance(v, (int, float))]
            if not raw:  # nothing to calibrate on yet: this batch trains without DRS
                return self.rl.model_copy(update={"drs": drs.model_copy(update={"enabled": False})})
            self.state.drs_tau = calibrate_tau(torch.tensor(raw, dtype=torch.float64), drs.tau_quantile)
            self._write_run_meta()
            log.info("DRS tau calibrated on %d raw scores of the first batch: %.4f", len(raw), self.state.drs_tau)
        return self.rl.model_copy(update={"drs": drs.model_copy(update={"tau": self.state.drs_tau})})

    def _write_run_meta(self) -> None:
        meta = {"run_id": self.state.run_id, "drs_tau": self.state.drs_tau, "drs_tau_quantile": self.rl.drs.tau_quantile,
                "drs_tau_calibrated_at_step": self.state.step}
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        (self.ckpt_dir / "run.json").write_text(json.dumps(meta, indent=1))

    def _dead_letter_unscorable(self, g: ConsumedGroup, reason: str) -> None:
        # marked consumed in the same transaction: a redone copy of the group is then a duplicate,
        # not a second dead letter for one admitted task
        self.groups.dead_letter(g.entry, f"unscorable group: {reason}", mark_key=self.keys.consumed(g.header.group_id),
                                mark_ttl_s=self.cfg.redis.dedup_ttl_s)
        M.GROUPS_DROPPED.labels("unscorable").inc()
        log.warning("dead-lettered group %s (task %s, %d references): %s", g.header.group_id, g.header.task_id,
                    g.header.n_refs, reason)

    def signals(self, batch: list[ConsumedGroup]) -> tuple[list[ConsumedGroup], BatchSignals | None]:
        """(the groups that can be scored, their signals); each other group is dead-lettered and counted.

        batch_signals raises ValueError for a batch it cannot score (e.g. a DRS slope k(n) <= 0 for a
        group's reference count, or scores for the wrong group size): that must not stop the
        learner. Each group is then scored alone to find the ones at fault; when no group is at
        fault alone, the batch as a whole is. Every round removes at least one group, so this ends;
        it returns ([], None) when no group is left.
        """
        while batch:
            try:
                return batch, self._batch_signals(batch)
            except ValueError as e:
                batch_error = e
            faults: dict[int, ValueError] = {}
            for i, g in enumerate(batch):
                try:
                    self._batch_signals([g])
                except ValueError as e:
                    faults[i] = e
            if not faults:
                faults = {i: batch_error for i in range(len(batch))}
            for i, e in faults.items():
                self._dead_letter_unscorable(batch[i], str(e))
            batch = [g for i, g in enumerate(batch) if i not in faults]
        return [], None

    # ---- update --------------------------------------------------------------------------------
    def update(self, batch: list[ConsumedGroup], sig: BatchSignals | None = None) -> dict[str, float]:
        """One learner step on `batch`: signals over the whole batch (computed here unless given, see
        :meth:`signals`), then the trainer's optimizer steps on the groups with their signals."""
        if sig is None:
            sig = self._batch_signals(batch)
        advantages = sig.advantages
        if self.rl.shuffle_advantages:  # negative control: the same values, attached to random samples
            gen = torch.Generator().manual_seed(self.rl.seed * 1_000_003 + self.state.step)
            flat = advantages.flatten()
            advantages = flat[torch.randperm(flat.numel(), generator=gen)].view_as(advantages)
        out = self.trainer.update([TrainGroup(g.rollout, advantages[b], sig.dar_weights[b]) for b, g in enumerate(batch)],
                                  step=self.state.step)
        out["time/worker_update_s"] = max(self.trainer.last_seconds)  # the slowest worker's
        out.update(self._reward_stats(batch, sig))
        out.update({f"signals/{k}": v for k, v in sig.diagnostics.items()})
        out["signals/dar_weight_std"] = float(sig.dar_weights.std(unbiased=False))
        out["signals/p_bar_mean"] = float(sig.p_bar.mean())
        out["data/version_lag_mean"] = sum(g.lag for g in batch) / len(batch)
        for phase in ("sample", "score"):  # the generators' seconds per group
            out[f"time/{phase}_s"] = sum(g.header.timings.get(phase, 0.0) for g in batch) / len(batch)
        self._export(out, sig)
        return out

    def _reward_stats(self, batch, sig) -> dict[str, float]:
        out = {}
        for k, name in enumerate(sig.names):
            vals = sig.raw[k][sig.applies[k]]
            vals = vals[~torch.isnan(vals)]
            if vals.numel():
                out[f"reward/{name}/mean"] = float(vals.mean())
                out[f"reward/{name}/std"] = float(vals.std(unbiased=False))
                M.REWARD_MEAN.labels(name).set(out[f"reward/{name}/mean"])
                M.REWARD_STD.labels(name).set(out[f"reward/{name}/std"])
                for n in sorted({g.header.n_refs for g in batch}):
                    rows = [b for b, g in enumerate(batch) if g.header.n_refs == n and bool(sig.applies[k, b])]
                    v = sig.raw[k][rows]
                    v = v[~torch.isnan(v)]
                    if v.numel():
                        out[f"reward/{name}/n{n}"] = float(v.mean())
                        M.REWARD_BY_NREFS.labels(name, str(n)).set(float(v.mean()))
        return out

    def _export(self, out: dict[str, float], sig) -> None:
        M.ZERO_STD_FRACTION.set(out.get("signals/zero_std_frac", 0.0))
        for s in ("adv_mean", "adv_abs_mean", "adv_min", "adv_max"):
            M.ADVANTAGE.labels(s.removeprefix("adv_")).set(out.get(f"losses/{s}", 0.0))
        w = sig.dar_weights
        for s, v in (("mean", w.mean()), ("min", w.min()), ("max", w.max()), ("std", w.std(unbiased=False))):
            M.DAR_WEIGHT.labels(s).set(float(v))
        M.KL.set(out.get("losses/kl", 0.0))
        M.CLIP_FRACTION.labels("high").set(out.get("losses/clip_frac_high", 0.0))
        M.CLIP_FRACTION.labels("low").set(out.get("losses/clip_frac_low", 0.0))
        for s in ("mean", "min", "max"):
            M.RATIO.labels(s).set(out.get(f"losses/ratio_{s}", 1.0))
        for t in ("loss", "policy_loss", "kl_penalty"):
            M.LOSS.labels(t).set(out.get(f"losses/{t}", 0.0))

    # ---- publish / checkpoint ------------------------------------------------------------------
    def publish(self, bump: bool = True, data: bytes | None = None) -> int:
        t0 = time.perf_counter()
        if bump:
            self.state.version += 1
        data = data if data is not None else self.trainer.trainable_state()
        source = None
        if self.weight_source is not None:  # the direct path: the source holds the bytes before Redis names them
            ray.get(self.weight_source.put.remote(self.state.version, data))
            source = source_name(self.keys.namespace)
        self.weights.publish(data, self.state.version, kind=self.cfg.policy.finetune, step=self.state.step,
                             probe=self.trainer.probe(), source=source)
        M.POLICY_VERSION_PUBLISHED.set(self.state.version)
        M.PHASE_SECONDS.labels("learner", "publish").observe(time.perf_counter() - t0)
        return self.state.version

    def save_checkpoint(self) -> Path:
        path = save_checkpoint(self.ckpt_dir, self.state, write_trainer=self.trainer.save)
        # the checkpoint holds these steps now: their groups can no longer be rolled back
        done = [k for k in self.r.hkeys(self.keys.step_groups) if int(k) <= self.state.step]
        if done:
            self.r.hdel(self.keys.step_groups, *done)
        return path

    # ---- the loop ------------------------------------------------------------------------------
    def _step(self, should_stop: Callable[[], bool], on_step: Callable[[dict], None] | None) -> bool:
        """One learner step: consume, signals, update, settle, publish, checkpoint. False: stopping
        with a partial batch (left pending for the next run)."""
        t0 = time.perf_counter()
        batch = self.consume(self.rl.groups_per_step, should_stop)
        if len(batch) < self.rl.groups_per_step:
            return False  # stopping (or timed out) with a partial batch: leave it pending for the next run
        t1 = time.perf_counter()
        batch, sig = self.signals(batch)  # dead-letters (and counts) the groups it cannot score
        unscorable = self.rl.groups_per_step - len(batch)
        if not batch:
            return True  # nothing left to train on: consume a fresh batch
        stats = self.update(batch, sig)
        t2 = time.perf_counter()
        # which groups this step trains on, before they are settled: if the learner dies before
        # a checkpoint holds the step, the resumed learner rolls them back (setup)
        # (at maxmemory HSET is refused like every write: back off as the acks do, not crash)
        step_groups = json.dumps([{"group_id": g.header.group_id, "task_id": g.header.task_id} for g in batch])
        retry_on_oom(lambda: self.r.hset(self.keys.step_groups, str(self.state.step + 1), step_groups),
                     what="learner step_groups", max_wait_s=self.groups.oom_wait_s)
        for g in batch:
            self._settle(g.entry, "consumed", g.header.group_id)
            M.GROUPS_CONSUMED.inc()
            M.GROUP_LAG.observe(g.lag)
        self.state.step += 1
        M.LEARNER_STEP.set(self.state.step)
        self.tasks.export_metrics()
        self.groups.export_metrics()
        if self.state.step % self.rl.publish_every == 0:
            self.publish()
        M.PHASE_SECONDS.labels("learner", "consume").observe(t1 - t0)
        M.PHASE_SECONDS.labels("learner", "update").observe(t2 - t1)
        if self.state.drs_tau is not None:
            stats["signals/drs_tau"] = self.state.drs_tau
        stats.update({"step": self.state.step, "version": self.state.version, "time/consume_s": t1 - t0,
                      "time/update_s": t2 - t1, "data/images": len(batch) * self.rl.group_size,
                      "data/groups_unscorable": unscorable})
        # the record goes in before the checkpoint: a checkpoint of step k holds k's record
        # (written after it, a kill before the next checkpoint lost k's record at resume)
        self.state.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()})
        del self.state.history[:-HISTORY_KEEP]  # bounded: it is written into every checkpoint
        if self.state.step % self.rl.checkpoint_every == 0:
            self.save_checkpoint()
        if on_step:
            on_step(stats)
        return True

    def train(self, steps: int | None = None, should_stop: Callable[[], bool] = lambda: False,
              on_step: Callable[[dict], None] | None = None, *, until: int | None = None) -> LearnerState:
        """Train until the learner reaches step `until` (the target total step, as ``max_steps``: a run
        resumed at step k takes ``until - k`` more steps; default ``rl.total_steps``). `steps` instead
        asks for that many more steps from wherever this learner is (programmatic use only; every
        CLI's ``--steps`` is the target total).

        Each step's history record is appended before that step's checkpoint is written, so the
        history stays exact, one record per step, across any number of resumes."""
        if steps is not None and until is not None:
            raise ValueError("give either steps (that many more) or until (the target total step), not both")
        total = self.rl.total_steps if until is None and steps is None else (
            until if until is not None else self.state.step + steps)
        if self.state.step:
            log.info("resuming at step %d; training to step %d", self.state.step, total)
        try:
            while self.state.step < total and not should_stop():
                try:
                    if not self._step(should_stop, on_step):
                        break
                except TrainerLost as e:  # a trainer worker died: back to the last checkpoint
                    self._resume_trainer(str(e))  # raises when Ray Train gave the group up
        except BaseException:
            try:
                self.save_checkpoint()
            except TrainerLost as e:  # the error being raised says why; the last checkpoint stands
                log.error("no final checkpoint: the trainer workers are gone (%s)", str(e).strip().splitlines()[-1][:300])
            raise
        self.save_checkpoint()
        return self.state
