"""The whole demo (untrained -> SFT -> RL -> report) with another SFT length or other plan
settings: does a stronger SFT, or an easier task, give RL more to work with? (docs/learning.md §5).
Writes a demo folder like `./dev demo`.

    .venv/bin/python scripts/demo_sft_steps.py --seed 0 --sft-steps 6000 --out runs/sft6k-s0
    .venv/bin/python scripts/demo_sft_steps.py --seed 0 --set layout="'corners'" --out runs/corners-s0
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-steps", type=int, default=None, help="default: the demo's")
    ap.add_argument("--sft-eval-every", type=int, default=None, help="default: the demo's")
    ap.add_argument("--set", action="append", default=[], help="plan_field=python_literal (repeatable).")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from common.config import load_config
    from dyref.demo import DemoPlan, run_demo
    from dyref.local import local_stack
    logging.basicConfig(level=logging.WARNING)
    changes = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.sft_steps is not None:
        changes["sft_steps"] = a.sft_steps
    if a.sft_eval_every is not None:
        changes["sft_eval_every"] = a.sft_eval_every
    plan = DemoPlan(seed=a.seed, **changes)
    cfg = load_config("cpu-tiny")
    t0 = time.perf_counter()
    with local_stack(cfg) as stack:
        s = run_demo(cfg, Path(a.out), plan, stack.redis_url, say=lambda m: print(m, flush=True))
    print(json.dumps({"seconds": round(time.perf_counter() - t0), "timings_s": s["timings_s"],
                      "rl_minus_sft": {m: {n: round(c["mean"], 3) for n, c in d.items()}
                                       for m, d in s["rl_minus_sft"].items()}}, indent=1, default=str))


if __name__ == "__main__":
    main()
