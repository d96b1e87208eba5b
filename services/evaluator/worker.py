"""The evaluator's loop: wait for a weight version that is due (every ``every`` versions), load it
through the common weight follower (checksum-verified, woken by the store's notice, refused
versions counted in dyref_weight_load_failures), score the held-out split, export and record the
scores. A separate process from the learner and generators
(a Ray actor, niced), so evaluating never blocks a learner step (scripts/bench_eval_overhead.py
measures what it costs the loop on a shared CPU)."""
from __future__ import annotations

import json
import logging
import time
from typing import Callable

from common import metrics as M
from common.config import DyRefConfig
from common.policy import build_policy
from common.policy.follower import WeightFollower, WeightSyncError
from common.transport.direct import DirectLink
from common.synthetic import SyntheticCase
from common.synthetic.evaluation import METRICS, evaluate_policy, summarise
from common.transport import Keys, WeightStore, connect

__all__ = ["EvaluatorWorker", "read_eval_history"]

log = logging.getLogger("dyref.evaluator")


def read_eval_history(r, keys: Keys) -> list[dict]:
    """Every record the evaluator wrote for this namespace, oldest first."""
    return [json.loads(x) for x in r.lrange(keys.eval_history, 0, -1)]


class EvaluatorWorker:
    def __init__(self, cfg: DyRefConfig, redis_url: str, cases: list[SyntheticCase], every: int, steps: int | None = None,
                 direct: DirectLink | None = None):
        if every < 1:
            raise ValueError(f"the evaluator needs every >= 1 versions, got {every}")
        if not cases:
            raise ValueError("the evaluator needs at least one held-out case")
        self.cfg, self.cases, self.every = cfg, cases, every
        self.steps = steps or cfg.policy.eval_inference_steps
        self.policy = build_policy(cfg.policy).eval()
        self.r = connect(redis_url, cfg.redis, service="evaluator")
        self.keys = Keys(cfg.redis.namespace)
        self.weights = WeightStore(self.r, self.keys, keep=cfg.redis.weights_keep,
                                   chunk_bytes=cfg.redis.weights_chunk_mb * 2**20)
        self.last: int | None = None
        self.evaluated = 0
        self.follower = WeightFollower(self.weights, self.policy.load_trainable_state, consumer="evaluator",
                                       service="evaluator", poll_interval_s=1.0, wanted=self.due,
                                       probe=self.policy.probe, probe_tolerance=cfg.redis.weights_probe_tolerance,
                                       direct=direct)
        for m in METRICS:  # the series exist from start-up (a scrape before the first evaluation sees them)
            M.EVAL_SCORE.labels(m, "all")

    def due(self, version: int) -> bool:
        return self.last is None or version >= self.last + self.every

    def evaluate_latest(self) -> dict | None:
        """Evaluate the newest version if it is due; returns the record written, else None. A version
        that fails to verify or load is refused by the follower (never retried) and not evaluated."""
        version = self.follower.poll()
        if version is None or version == self.last:
            return None
        t0 = time.perf_counter()
        rows = evaluate_policy(self.policy, self.cases, self.steps)
        # names: common/rl/history.py
        record = {"version": version, "step": self.follower.served.step, "time/evaluate_s": round(time.perf_counter() - t0, 3),
                  "data/created_at": time.time()}
        for m in METRICS:
            for n, cell in summarise(rows, m).items():
                record[f"eval/{m}/{n}"] = round(cell["mean"], 6)
                M.EVAL_SCORE.labels(m, str(n)).set(cell["mean"])
        M.EVAL_VERSION.set(version)
        M.PHASE_SECONDS.labels("evaluator", "evaluate").observe(record["time/evaluate_s"])
        self.r.rpush(self.keys.eval_history, json.dumps(record))
        self.last = version
        self.evaluated += 1
        return record

    def run(self, should_stop: Callable[[], bool], poll_s: float = 0.5) -> int:
        while not should_stop():
            if self.evaluate_latest() is None:
                try:  # woken by the notice of a due version; poll_s bounds how late a stop is seen
                    self.follower.wait_for((self.last + self.every) if self.last is not None else 0, poll_s)
                except WeightSyncError:
                    pass
        # the run's last weights are scored when due, even if a busy box kept this (low-priority)
        # loop behind the learner: the curve then always ends at the final version
        self.evaluate_latest()
        return self.evaluated
