"""How much the RL-time evaluator slows the RL loop: the demo's RL stage from a finished demo's SFT
weights, run twice side by side on the same box — evaluator off, then on (every `--every` published
versions on the demo's held-out subset) — and the learner's seconds per step compared.

    .venv/bin/python scripts/bench_eval_overhead.py --from runs/demo [--steps 100] [--every 25]

Prints one JSON object: seconds per learner step (median and mean, after `--warmup` steps) for
each arm, the number of evaluations made, and the ratio on / off. The target is a ratio ≤ 1.10
(docs/learning.md §4). Stop other jobs first: the figure is only meaningful on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def one_arm(base, src: Path, plan, redis_url: str, steps: int, every: int, warmup: int) -> dict:
    from dyref.demo import demo_config, eval_subset, make_data, rl_cases, rl_policy_config
    from dyref.launch import run_rl
    from services.learner.tasks import TaskSource, TrainingCase
    train, test = make_data(plan)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = rl_policy_config(demo_config(base, Path(tmp), plan), src / "sft" / "trainable.safetensors")
        cfg.rl.total_steps, cfg.rl.eval_every, cfg.rl.checkpoint_every = steps, every, 10_000
        cfg.redis.url, cfg.redis.embedded = redis_url, False
        cases = rl_cases([TrainingCase(**c.training_case()) for c in train], plan)
        t0 = time.perf_counter()
        _, state, statuses = run_rl(cfg, redis_url, TaskSource(cases, seed=plan.seed),
                                    eval_cases=eval_subset(test, plan.eval_subset) if every else None)
        wall = time.perf_counter() - t0
    secs = [h["time/consume_s"] + h["time/update_s"] for h in state.history[warmup:]]
    evals = sum(s.get("evaluations", 0) for s in statuses if isinstance(s, dict))
    return {"every": every, "steps": len(state.history), "median_s_per_step": round(statistics.median(secs), 4),
            "mean_s_per_step": round(statistics.mean(secs), 4), "wall_s": round(wall, 1), "evaluations": evals}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="src", required=True, help="A finished demo folder (its sft/ weights are used).")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25, help="Evaluate every this many published versions (the demo's).")
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    from common.config import load_config
    from dyref.demo import DemoPlan
    from dyref.local import local_stack
    src = Path(a.src)
    plan = DemoPlan.load(src)
    base = load_config("cpu-tiny")
    with local_stack(base) as stack:
        off = one_arm(base, src, plan, stack.redis_url, a.steps, 0, a.warmup)
        on = one_arm(base, src, plan, stack.redis_url, a.steps, a.every, a.warmup)
    print(json.dumps({"off": off, "on": on,
                      "ratio_mean": round(on["mean_s_per_step"] / off["mean_s_per_step"], 3),
                      "ratio_median": round(on["median_s_per_step"] / off["median_s_per_step"], 3),
                      "target": "ratio_mean <= 1.10"}, indent=1))


if __name__ == "__main__":
    main()
