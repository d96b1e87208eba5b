#!/usr/bin/env python
"""Which cases does the demo's SFT place? Held-out placement split by what the references are
(subjects, background), with and without the spill condition (docs/learning.md §5).

Trains the demo's SFT stage in --out (or reuses a finished one there: a demo folder works), then
scores every held-out case with the demo's 8-step ODE and prints one row per (reference count,
subject count, background). "inside only" drops the metric's spill condition (common/synthetic/
metrics.py): if it is much higher than placement, the policy places subjects but copies them too.

    .venv/bin/python scripts/sft_breakdown.py --seed 0 --out runs/sft-s0
    .venv/bin/python scripts/sft_breakdown.py --seed 0 --set max_subjects=1 --out runs/one-subject-s0
    # more training cases, weighted towards more references; the demo's held-out split is kept
    .venv/bin/python scripts/sft_breakdown.py --seed 0 --train-cases 12000 --train-count-weights 1,8,8 --out runs/sft-big-s0
"""
from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def inside_only_hits(gen, case) -> list[bool]:
    """placement_hits without the spill condition: is the slot's mean colour within τ of the subject's."""
    import numpy as np

    from common.synthetic.metrics import placement
    places = placement(case)
    expected = np.array([p.colour for p in places])
    out = []
    for i, p in enumerate(places):
        rivals = np.vstack([np.delete(expected, i, axis=0), np.asarray(p.empty)[None]])
        tau = 0.5 * np.linalg.norm(rivals - expected[i], axis=1).min()
        out.append(bool(np.linalg.norm(gen[p.mask].mean(0) - expected[i]) <= tau))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="plan_field=python_literal (repeatable).")
    ap.add_argument("--train-cases", type=int, default=None, help="Training cases (default: the plan's n_train).")
    ap.add_argument("--train-count-weights", default=None,
                    help="Weights of 1, 2, ... references in the training split, e.g. 1,8,8 (default: equal).")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import numpy as np
    import torch

    from common.config import load_config
    from common.synthetic.metrics import placement_hits
    from dyref.demo import DemoPlan, demo_config, make_data, run_sft
    from services.learner.tasks import TrainingCase
    torch.set_num_threads(1)
    plan = dataclasses.replace(DemoPlan(seed=a.seed), **{k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.set)})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(load_config("cpu-tiny"), out, plan, namespace="sft-breakdown")
    train, test = make_data(plan)
    if a.train_cases or a.train_count_weights:   # another training split; the held-out split stays the demo's
        from common.synthetic import make_split
        from common.synthetic.spec import fingerprint
        weights = [float(w) for w in a.train_count_weights.split(",")] if a.train_count_weights else [1.0] * plan.max_refs
        train = make_split("train", a.train_cases or plan.n_train, plan.seed, size=plan.size, ref_size=16,
                           max_refs=plan.max_refs, categories=list(plan.categories),
                           count_weights={n + 1: w for n, w in enumerate(weights)}, layout=plan.layout,
                           max_subjects=plan.max_subjects, exclude={fingerprint(c.spec) for c in test})
    t0 = time.perf_counter()
    sft = run_sft(cfg, [TrainingCase(**c.training_case()) for c in train], test, plan,
                  lambda m: print(f"[{time.perf_counter() - t0:.0f}s] {m}", flush=True))
    policy = sft.policy.eval()
    rows = []
    for c in test:
        img = policy.generate(c.prompt, [(r, im) for r, im, _ in c.references], seed=1 + c.index,
                              num_inference_steps=plan.eval_steps, output_type="np")[0]
        roles = [r for r, _, _ in c.references]
        rows.append({"n_refs": c.n_refs, "subjects": roles.count("subject"), "background": "background" in roles,
                     "placement": float(np.mean(placement_hits(img, c))),
                     "inside_only": float(np.mean(inside_only_hits(img.astype(np.float32) / 255.0, c)))})
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["n_refs"], r["subjects"], r["background"])].append(r)
    print(f"SFT {plan.sft_steps} steps, seed {plan.seed}: held-out placement by what the references are")
    print("| references | subjects | background | cases | placement | inside only |\n| --- | --- | --- | --- | --- | --- |")
    for (n, k, bg), v in sorted(groups.items()):
        print(f"| {n} | {k} | {'yes' if bg else 'no'} | {len(v)} | {np.mean([r['placement'] for r in v]):.3f} "
              f"| {np.mean([r['inside_only'] for r in v]):.3f} |")
    (out / "sft_breakdown.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
