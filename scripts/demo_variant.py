"""Run the demo's RL stage (and its report) with changed settings, starting from a finished demo's
SFT stage: the way the demo's RL settings were chosen (docs/learning.md). The SFT weights and the
untrained/SFT evaluations are copied from --from, so only RL and its evaluation run.

    .venv/bin/python scripts/demo_variant.py --from runs/demo --out runs/variant-lr1e-3 --set rl_lr=0.001
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="src", required=True, help="A finished demo folder (its sft/ is reused).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], help="plan_field=python_literal (repeatable).")
    ap.add_argument("--extra", action="append", default=[], help="dotted.config.path=python_literal (repeatable).")
    a = ap.parse_args()
    from common.config import load_config
    from dyref.demo import DemoPlan, run_demo
    from dyref.local import local_stack
    logging.basicConfig(level=logging.WARNING)
    src, out = Path(a.src), Path(a.out)
    base = DemoPlan.load(src)
    changes = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.set)}
    extra = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.extra)}
    plan = dataclasses.replace(base, **changes, extra={**base.extra, **extra})
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "sft").exists():
        shutil.copytree(src / "sft", out / "sft")
    for name in ("eval_untrained.json", "images_untrained.npz", "eval_sft.json", "images_sft.npz"):
        if (src / name).is_file() and not (out / name).exists():
            shutil.copy(src / name, out / name)
    cfg = load_config("cpu-tiny")
    t0 = time.perf_counter()
    with local_stack(cfg) as stack:
        summary = run_demo(cfg, out, plan, stack.redis_url, say=print)
    print(json.dumps({"seconds": round(time.perf_counter() - t0), "changes": changes, "extra": extra,
                      "rl_minus_sft": {m: {n: round(c["mean"], 3) for n, c in d.items()}
                                       for m, d in summary["rl_minus_sft"].items()}}, indent=1))


if __name__ == "__main__":
    main()
