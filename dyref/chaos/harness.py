"""The chaos harness: a tiny RL loop on the local stack, fault helpers, and the exact ledger check.

Every scenario brings up its own Redis namespace (and its own EmbeddedRedis when it restarts,
fills or breaks Redis), a reward app, generator actors and a learner, injects one fault, stops
everything, and then checks the books twice:

1. the audit (services.learner.audit.read_audit): admitted = consumed + dropped_stale +
   dead_lettered + in_flight, kept by the learner in the transactions that settle entries;
2. independently of the counters, by walking every admitted task id ``<run_id>-<n>`` (n <
   admitted) and finding it in Redis: settled (its group id is marked consumed, or it sits in a
   dead-letter stream) or still in flight (an entry in the task or group stream).

``lost`` = admitted task ids found nowhere. ``duplicated`` = groups counted more than once
(settled count above the distinct consumed marks, or a task settled in two places) plus groups
consumed beyond what the learner's steps used (consumed > steps x groups_per_step + rolled back).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from common.config import DyRefConfig, load_config
from common.schemas import GroupHeader, group_id_for
from common.transport import EmbeddedRedis, Keys
from dyref.chaos.faults import ScorerFault
from dyref.launch import wait_for as wait_until  # the one polling helper, re-exported for scenarios
from services.learner.audit import read_audit

__all__ = ["Outcome", "chaos_cfg", "ledger", "own_redis", "Loop", "actor_pid", "kill_pid", "replica_actors",
           "small_source", "counter_value", "wait_until"]

log = logging.getLogger("dyref.chaos")


@dataclass
class Outcome:
    """One row of the chaos table."""
    scenario: str
    ok: bool
    outcome: str
    lost: int = 0
    duplicated: int = 0
    audit: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    seconds: float = 0.0

    def row(self) -> dict:
        a = self.audit
        return {"scenario": self.scenario, "result": "PASS" if self.ok else "FAIL", "outcome": self.outcome,
                "lost": self.lost, "duplicated": self.duplicated, "admitted": a.get("admitted", 0),
                "consumed": a.get("consumed", 0), "stale": a.get("dropped_stale", 0),
                "dead": a.get("dead_lettered", 0), "in_flight": a.get("in_flight", 0),
                "redelivered": a.get("duplicate", 0), "seconds": round(self.seconds, 1)}


def chaos_cfg(redis_url: str, workdir: str | os.PathLike, *, rl: dict | None = None, rewards: dict | None = None,
              redis: dict | None = None) -> DyRefConfig:
    """The tiny profile cut down further (G=4, 2 groups/step, 32 px, 4 steps): seconds per step on a CPU."""
    ns = f"chaos{uuid.uuid4().hex[:8]}"
    over = {
        "redis": {"url": redis_url, "namespace": ns, "claim_idle_ms": 1500, "embedded": False, **(redis or {})},
        "policy": {"finetune": "full", "height": 32, "width": 32, "reference_size": 32, "num_inference_steps": 4,
                   "sde": {"dynamics": "flow-sde", "noise_level": 1.0, "train_steps": [0, 1], "num_train_steps": 1}},
        "rl": {"group_size": 4, "groups_per_step": 2, "lr": 2e-3, "max_staleness": 1, "publish_every": 1,
               "checkpoint_every": 2, "checkpoint_dir": str(Path(workdir) / ns / "ckpt"), "kl": {"beta": 0.0},
               "ema": {"enabled": False}, "advantage": "grpo", "dar": {"enabled": False},
               "drs": {"enabled": False}, "total_steps": 1000, **(rl or {})},
        "rewards": {"components": [{"name": "colour", "scorer": "colour", "weight": 1.0, "against": "none"}],
                    "timeout_s": 20, "retries": 3, **(rewards or {})},
    }
    return load_config("cpu-tiny", over)


def small_source(n: int = 4):
    from services.learner.tasks import TaskSource, synthetic_cases
    return TaskSource(synthetic_cases(n, seed=3, size=32, ref_size=32, max_refs=2), seed=0)


@contextlib.contextmanager
def own_redis(workdir: str | os.PathLike, **kw) -> Iterator[EmbeddedRedis]:
    """A private redis-server on a free port (never the machine's 6379), stopped on exit."""
    server = EmbeddedRedis(data_dir=Path(workdir) / f"redis-{uuid.uuid4().hex[:6]}", **kw).start()
    try:
        yield server
    finally:
        server.stop(kill=True)


def _scan(r, pattern: str) -> list[str]:
    return [k.decode() for k in r.scan_iter(match=pattern, count=1000)]


def ledger(r, keys: Keys, cfg: DyRefConfig, learner_steps: int, rolled_back: int = 0) -> tuple[int, int, dict, dict]:
    """(lost, duplicated, audit, independent checks) of a stopped run; see the module docstring."""
    audit = read_audit(r, keys, cfg.redis)
    raw_run = r.hget(keys.audit, "run_id")
    run_id = raw_run.decode() if raw_run else ""
    marks = set(k.rsplit(":", 1)[-1] for k in _scan(r, keys.consumed("*")))
    latest = r.get(keys.weights_latest)
    top = (json.loads(latest)["version"] + 2) if latest else 64  # task versions are <= the newest published

    def ids_in(stream: str, field_: str) -> list[str]:
        out = []
        for _eid, f in r.xrange(stream):
            f = {k.decode(): v.decode() for k, v in f.items()}
            if field_ == "header" and "header" in f:
                out.append(GroupHeader.model_validate_json(f["header"]).task_id)
            elif field_ in f:
                out.append(f[field_])
        return out

    in_tasks = set(ids_in(keys.tasks, "task_id"))
    in_groups = set(ids_in(keys.groups, "header"))
    dead = ids_in(keys.dead_letter("tasks"), "task_id") + ids_in(keys.dead_letter("groups"), "header")
    lost_ids, multi, settled_by_mark = [], 0, 0
    for n in range(audit["admitted"]):
        tid = f"{run_id}-{n:08d}"
        marked = sum(group_id_for(tid, v) in marks for v in range(top))
        settled = marked + dead.count(tid)
        settled_by_mark += marked
        multi += max(0, settled - 1)
        if settled == 0 and tid not in in_tasks and tid not in in_groups:
            lost_ids.append(tid)
    settled_count = audit["consumed"] + audit["dropped_stale"]
    over_counted = max(0, settled_count - len(marks))
    over_used = max(0, audit["consumed"] - learner_steps * cfg.rl.groups_per_step - rolled_back)
    in_flight_seen = sum(1 for n in range(audit["admitted"]) if f"{run_id}-{n:08d}" in in_tasks | in_groups)
    checks = {"distinct_consumed_marks": len(marks), "settled_counted": settled_count,
              "marks_of_admitted_ids": settled_by_mark, "learner_steps_x_groups": learner_steps * cfg.rl.groups_per_step,
              "rolled_back": rolled_back, "in_flight_found_in_streams": in_flight_seen,
              "lost_ids": lost_ids[:5]}
    return len(lost_ids), over_counted + multi + over_used, audit, checks


def counter_value(metric, **labels) -> float:
    """Current value of a prometheus_client Counter/Gauge child in this process."""
    return float(metric.labels(**labels)._value.get()) if labels else float(metric._value.get())


# ---- processes -----------------------------------------------------------------------------------
def actor_pid(handle) -> int:
    """The OS pid of a Ray actor (works while the actor is busy in another method)."""
    import ray
    return int(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60))


def kill_pid(pid: int) -> None:
    """kill -9."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def replica_actors(app: str, deployment: str) -> list:
    """Handles of the live Serve replica actors of app/deployment."""
    import ray
    out = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"] if isinstance(a, dict) else a
        ns = a.get("namespace", "serve") if isinstance(a, dict) else "serve"
        if name.startswith("SERVE_REPLICA::") and f"{app}#{deployment}#" in name:
            with contextlib.suppress(ValueError):
                out.append(ray.get_actor(name, namespace=ns))
    return out


class Loop:
    """Reward app + generator actors + an in-process learner for one scenario."""

    def __init__(self, cfg: DyRefConfig, redis_url: str, generators: int = 2, learner: bool = True,
                 reward_fault: ScorerFault | None = None):
        from dyref.launch import start_reward_app
        from services.generator.actor import start_generators
        from services.learner.rl_recipe import RLRecipe
        self.cfg, self.url = cfg, redis_url
        start_reward_app(cfg, wrap_scorer=reward_fault)  # redeploys the app with this scenario's reward settings
        self.recipe = RLRecipe(cfg, redis_url, small_source()).setup() if learner else None
        self.prefix = f"chaos-{uuid.uuid4().hex[:6]}"
        self.gens = start_generators(cfg, redis_url, n=generators, prefix=self.prefix)

    def add_generator(self):
        from services.generator.actor import start_generators
        self.gens += start_generators(self.cfg, self.url, n=1, prefix=f"{self.prefix}-x{len(self.gens)}")

    def train(self, steps: int, timeout_s: float = 240.0) -> int:
        """Run `steps` learner steps (bounded in time); returns the steps actually taken."""
        start = self.recipe.state.step
        deadline = time.monotonic() + timeout_s
        self.recipe.train(steps=steps, should_stop=lambda: time.monotonic() > deadline)
        return self.recipe.state.step - start

    def stop(self) -> list[dict]:
        import ray
        if self.recipe is not None:
            self.recipe.close()
        statuses = []
        for a, _ in self.gens:
            with contextlib.suppress(Exception):
                a.stop.remote()
        for a, ref in self.gens:
            try:
                ray.get(ref, timeout=60)
                statuses.append(ray.get(a.status.remote(), timeout=10))
            except Exception as e:  # noqa: BLE001 - a killed actor has nothing to say
                statuses.append({"error": type(e).__name__})
            with contextlib.suppress(Exception):
                ray.kill(a)
        return statuses
