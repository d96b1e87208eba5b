"""Generator: task -> group rollout -> rewards -> publish. The Ray actor in actor.py wraps this.

Order of one group (docs/architecture.md, "Data flow of one RL step"): read a task (new, or
reclaimed from a dead generator), make sure the served weights are at least the task's version
(switching only here, between groups, after the checksum verifies), sample G images with SDE
noise on the train steps, score them on the reward deployments, publish the group (blob + header
in one transaction), and only then ack the task. A crash anywhere before the ack leaves the task
pending for another generator; the group id is derived from the task id, so a group published
twice is counted once.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from pydantic import ValidationError

from common import metrics as M
from common.codec import CodecError, decode, encode
from common.config import DyRefConfig
from common.images import ImageError, decode_image, encode_image
from common.policy import GroupRollout, ScoredGroup, build_policy
from common.policy.families import to_pil
from common.policy.follower import WeightFollower, WeightSyncError
from common.transport.direct import DirectLink
from common.schemas import GroupHeader, Task, group_id_for
from common.transport import Entry, Keys, WeightStore, connect
from common.transport import group_queue, task_queue

# WeightSyncError (common.policy.follower): sync_weights raises it; re-exported for the callers
__all__ = ["GeneratorWorker", "WeightSyncError"]

log = logging.getLogger("dyref.generator")


@dataclass
class _InFlight:
    entry: Entry
    task: Task
    rollout: GroupRollout
    version: int
    scoring: object
    sample_s: float
    scored_at: float


class GeneratorWorker:
    def __init__(self, generator_id: str, cfg: DyRefConfig, redis_url: str, score_group: Callable,
                 direct: DirectLink | None = None):
        """`score_group(task, images_png: list[bytes]) -> {reward name: [G][J] scores or None}`; a
        client with ``submit``/``collect`` halves (common.rewards.client.RewardClient) lets scoring
        overlap the next group's sampling."""
        self.id, self.cfg = generator_id, cfg
        self.policy = build_policy(cfg.policy).eval()
        self.r = connect(redis_url, cfg.redis, service="generator")
        # this generator's series exist from its start, so rate() has points before the first group
        M.GROUPS_PUBLISHED.labels(self.id)
        M.IMAGES_GENERATED.labels(self.id)
        self.keys = Keys(cfg.redis.namespace)
        self.tasks = task_queue(self.r, self.keys, cfg.redis)
        self.groups = group_queue(self.r, self.keys, cfg.redis)
        self.weights = WeightStore(self.r, self.keys, keep=cfg.redis.weights_keep,
                                   chunk_bytes=cfg.redis.weights_chunk_mb * 2**20)
        self.follower = WeightFollower(self.weights, self.policy.load_trainable_state, consumer=self.id,
                                       service="generator", poll_interval_s=cfg.redis.weights_poll_s,
                                       probe=self.policy.probe, probe_tolerance=cfg.redis.weights_probe_tolerance,
                                       direct=direct)
        self._submit = getattr(score_group, "submit", lambda task, pngs: (task, pngs))
        self._collect = getattr(score_group, "collect", lambda sub: score_group(*sub))
        self._reclaim_every_s = max(0.01, cfg.redis.claim_idle_ms / 2000)
        self._next_reclaim = time.monotonic()  # due at once: a restarted generator first finishes what it held
        self.held: set[str] = set()  # task entry ids this process took and has not acked or given up
        self.groups_done = 0

    # ---- weights -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The policy version served; -1 before the first one loaded."""
        return -1 if self.follower.version is None else self.follower.version

    @property
    def refused_versions(self) -> set[int]:
        return self.follower.refused

    def sync_weights(self, min_version: int = 0, timeout_s: float = 120.0) -> int:
        """Load the newest published weights (verified); wait for `min_version` if it is not out yet
        (woken by the weight notice). Raises WeightSyncError after `timeout_s`."""
        return self.follower.wait_for(min_version, timeout_s)

    # ---- one task ------------------------------------------------------------------------------
    def next_entry(self, block_ms: int | None = 500) -> Entry | None:
        """The next task: when the janitor timer is due, first this generator's own leftovers (its
        pending tasks it is not working on: those a previous process of the same name held when it
        died, or one it gave up on), then a dead consumer's idle one; else a new one, else (stream
        empty) a reclaimed one.

        The janitor runs on a timer (every half ``claim_idle_ms``), not only when the stream is empty:
        under steady load ``read`` always returns new tasks, and a killed generator's task would sit
        pending (holding an admission slot) until the run drains. It never takes back a task this
        generator is still working on (``skip_own``): while a reward replica is down its group waits
        on retries longer than ``claim_idle_ms``, and retaking it would sample the group twice."""
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + self._reclaim_every_s
            entries, _dead = self.tasks.own_pending(self.id, exclude=self.held)
            if not entries:
                entries, _dead = self.tasks.reclaim(self.id, count=1, max_claimed=1, skip_own=True)
            if entries:
                return self._hold(entries[0])
        entries = self.tasks.read(self.id, count=1, block_ms=block_ms)
        if not entries:
            entries, _dead = self.tasks.reclaim(self.id, count=1, max_claimed=1, skip_own=True)
            self._next_reclaim = time.monotonic() + self._reclaim_every_s
        return self._hold(entries[0]) if entries else None

    def _hold(self, entry: Entry) -> Entry:
        self.held.add(entry.id)
        return entry

    def start(self, entry: Entry) -> _InFlight | None:
        """Sample the task's group and send it to the reward workers; bad tasks are dead-lettered."""
        try:
            blob = self.tasks.blob(entry)
            if blob is None:
                raise CodecError("task blob is missing (expired or never written)")
            task = Task.model_validate(decode(blob, max_bytes=self.cfg.redis.max_payload_mb * 2**20))
            refs = [(ref.role, decode_image(ref.image, what=f"reference {i + 1} ({ref.role})"))
                    for i, ref in enumerate(task.references)]
        except (CodecError, ValidationError, ImageError) as e:
            self.tasks.dead_letter(entry, f"bad task: {e}")
            self.held.discard(entry.id)
            return None
        self.sync_weights(task.policy_version)  # between groups only: never mid-group
        t0 = time.perf_counter()
        rollout = self.policy.sample_group(task.prompt, refs, task.group_size, task.sampling, task.seed)
        t1 = time.perf_counter()
        pngs = [encode_image(im) for im in to_pil(rollout.images)]
        return _InFlight(entry, task, rollout, self.version, self._submit(task, pngs), t1 - t0, time.perf_counter())

    def finish(self, job: _InFlight) -> GroupHeader:
        """Wait for the scores, publish the group (blob + header in one transaction), then ack the task."""
        rewards = self._collect(job.scoring)
        t2 = time.perf_counter()
        task, gid = job.task, group_id_for(job.task.task_id, job.task.policy_version)
        blob = encode(ScoredGroup(task_id=task.task_id, rollout=job.rollout, rewards=rewards,
                                  record_index=task.record_index).to_wire())
        header = GroupHeader(group_id=gid, task_id=task.task_id, policy_version=job.version, generator_id=self.id,
                             blob_key=self.keys.blob("group", gid), blob_bytes=len(blob),
                             blob_sha256=hashlib.sha256(blob).hexdigest(), group_size=task.group_size,
                             n_refs=task.n_refs, timings={"sample": job.sample_s, "score": t2 - job.scored_at})
        self.groups.add({"header": header.model_dump_json()}, blob=blob, blob_key=header.blob_key)
        self.tasks.ack(job.entry)  # only now: the group is durably published
        self.held.discard(job.entry.id)
        t3 = time.perf_counter()
        for phase, dt in (("sample", job.sample_s), ("score", t2 - job.scored_at), ("publish", t3 - t2)):
            M.PHASE_SECONDS.labels("generator", phase).observe(dt)
        M.GROUPS_PUBLISHED.labels(self.id).inc()
        M.IMAGES_GENERATED.labels(self.id).inc(task.group_size)
        self.groups_done += 1
        return header

    def process(self, entry: Entry) -> GroupHeader | None:
        """One task start to finish (no overlap)."""
        job = self.start(entry)
        return self.finish(job) if job is not None else None

    def run(self, should_stop: Callable[[], bool]) -> int:
        """Loop until `should_stop()`, sampling group k+1 while group k is being scored.

        At most one group is in flight besides the one being sampled; it is finished (published,
        task acked) before the next is started. Weights stay fresh between groups even when idle.
        """
        pending = None
        while not should_stop():
            entry = self.next_entry(block_ms=None if pending else 500)  # None: no BLOCK (0 would block forever)
            started = None
            if entry is not None:
                try:
                    started = self.start(entry)
                except WeightSyncError as e:
                    # the task stays pending: the janitor's next round (own leftovers) or another generator retries it
                    log.warning("%s", e)
                    self.held.discard(entry.id)
            if pending is not None:
                self.finish(pending)
            pending = started
            if entry is None and pending is None:
                self.follower.poll_if_due()  # idle: switch on a weight notice, or at the fallback check
        if pending is not None:
            self.finish(pending)
        return self.groups_done
