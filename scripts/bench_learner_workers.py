"""Learner step time with 1 vs 2 trainer workers on the same batch, side by side in one run.

One batch of GRPO groups (sampled once by the tiny policy) is trained by: the in-process trainer
with 1 torch thread and with 2, then 2 Ray Train workers (gloo, 1 thread each) with DDP and with
FSDP2. Each row is the median of ``--steps`` timed updates after one warm-up; the worker rows
also give the slowest worker's own seconds (without the control plane's round trip: shipping the
shards through Ray's object store and collecting the statistics). The communication of a step is
stated from a measured all-reduce and all-gather of the trainable parameters among the 2 workers.

    .venv/bin/python scripts/bench_learner_workers.py [--finetune full] [--steps 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common.config import RayConfig, load_config  # noqa: E402
from common.schemas import SamplingParams  # noqa: E402
from dyref.local import init_ray  # noqa: E402
from services.learner.trainer import Trainer, TrainGroup  # noqa: E402
from services.learner.workers import TrainerGroup  # noqa: E402


def config(args, workers: int = 1, strategy: str = "ddp"):
    return load_config("cpu-tiny", {
        "policy": {"finetune": args.finetune, "height": args.size, "width": args.size, "reference_size": args.size,
                   "sde": {"train_steps": [0, 1, 2], "num_train_steps": args.train_steps}},
        "rl": {"group_size": args.group_size, "groups_per_step": args.groups, "kl": {"beta": 0.04},
               "ema": {"enabled": False},
               "learner": {"workers": workers, "strategy": strategy, "cpus_per_worker": 1}}})


def batch(cfg, trainer: Trainer) -> list[TrainGroup]:
    params = SamplingParams.from_config(cfg.policy)
    g = cfg.rl.group_size
    return [TrainGroup(trainer.policy.sample_group(f"a red square at the top left {k}", [], g, params, seed=k),
                       torch.randn(g, generator=torch.Generator().manual_seed(k)), torch.tensor(1.0))
            for k in range(cfg.rl.groups_per_step)]


def timed(update, steps: int) -> list[float]:
    update(0)  # warm-up
    out = []
    for s in range(1, steps + 1):
        t0 = time.perf_counter()
        update(s)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--finetune", choices=["full", "lora"], default="full")
    ap.add_argument("--size", type=int, default=64, help="image side in px")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--groups", type=int, default=4, help="groups per step")
    ap.add_argument("--train-steps", type=int, default=2, help="train steps per rollout")
    ap.add_argument("--steps", type=int, default=5, help="timed updates per row")
    ap.add_argument("--out", default=None, help="folder for results.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    cfg1 = config(args)
    torch.set_num_threads(1)
    local = Trainer(cfg1.policy, cfg1.rl)
    groups = batch(cfg1, local)
    rows = []

    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = timed(lambda s: local.update(groups, step=s), args.steps)
        rows.append({"trainer": f"in-process, {threads} thread(s)", "step_s": statistics.median(t)})
    torch.set_num_threads(1)

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=256))
    comm = None
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("ddp", "fsdp2"):
            cfg = config(args, workers=2, strategy=strategy)
            group = TrainerGroup(cfg.policy, cfg.rl, storage=Path(tmp) / strategy)
            try:
                worker_s: list[float] = []

                def update(s):
                    group.update(groups, step=s)
                    worker_s.append(max(group.last_seconds))
                t = timed(update, args.steps)
                rows.append({"trainer": f"2 Ray Train workers, {strategy}", "step_s": statistics.median(t),
                             "slowest_worker_s": statistics.median(worker_s[1:])})
                if comm is None:
                    comm = group.measure_communication(repeats=9)
            finally:
                group.close()

    base = rows[0]["step_s"]
    terms = args.groups * args.train_steps
    print(f"\nlearner step: {args.groups} groups x G={args.group_size} x {args.train_steps} train steps, "
          f"{args.size}px, finetune={args.finetune}, minibatches=1; median of {args.steps} after a warm-up\n")
    print(f"| trainer | step s | vs 1 worker, 1 thread | slowest worker s |\n|---|---|---|---|")
    for r in rows:
        w = f"{r['slowest_worker_s']:.3f}" if "slowest_worker_s" in r else ""
        print(f"| {r['trainer']} | {r['step_s']:.3f} | {base / r['step_s']:.2f}x | {w} |")
    mb = comm["trainable_bytes"] / 2**20
    print(f"\ncommunication among 2 gloo workers, trainable {mb:.2f} MB fp32: one all-reduce "
          f"{comm['all_reduce_s'] * 1e3:.2f} ms, one all-gather {comm['all_gather_s'] * 1e3:.2f} ms. Per step: DDP "
          f"all-reduces the gradients once per minibatch (1 here: {comm['all_reduce_s'] * 1e3:.2f} ms); FSDP2, per "
          f"train step, all-gathers the parameters for each forward (the policy's and the KL reference's) and for "
          f"the backward, and reduce-scatters the gradients: 4 collectives of that size x {terms} train steps, "
          f"about {4 * terms * comm['all_gather_s'] * 1e3:.1f} ms at the all-gather's time.")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "communication": comm}, indent=1))


if __name__ == "__main__":
    main()
