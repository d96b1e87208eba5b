"""Distributed RL loop vs a single-process synchronous loop (the paper's shape), same config, same box.

(a) distributed: reward Serve app + generator actor(s) + learner, through Redis streams and the
    weight store (dyref.launch.run_rl);
(b) synchronous: one process samples each group with the learner's own policy, scores it with the
    same scorer in-process, and runs the same update (RLRecipe.update) — no Ray, no transport.
Both run the same number of learner steps; the first `--warmup` steps are excluded from the rate.

    .venv/bin/python scripts/bench_rl_loop.py [--steps 12] [--warmup 2] [--generators 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_cfg(redis_url: str, ckpt: str, steps: int):
    from common.config import load_config
    return load_config("cpu-tiny", {
        "redis": {"url": redis_url, "namespace": f"bench{uuid.uuid4().hex[:6]}", "embedded": False},
        "policy": {"finetune": "full"},
        "rl": {"total_steps": steps, "checkpoint_every": 10_000, "checkpoint_dir": ckpt, "kl": {"beta": 0.0},
               "ema": {"enabled": False}, "max_staleness": 1},
        "rewards": {"components": [{"name": "colour", "scorer": "colour", "against": "none"}]},
    })


def rate(history: list[dict], warmup: int) -> tuple[float, float]:
    """(images/s, seconds/step) over the steps after warm-up, from the learner's step timings."""
    h = history[warmup:]
    secs = [x["time/consume_s"] + x["time/update_s"] for x in h]
    return sum(x["data/images"] for x in h) / sum(secs), statistics.median(secs)


def run_sync(cfg, source, steps: int) -> list[dict]:
    import torch
    from common.images import decode_image
    from common.policy.families import to_pil
    from common.rewards.registry import build_scorer
    from common.schemas import GroupHeader
    from services.learner.rl_recipe import ConsumedGroup, RLRecipe
    torch.set_num_threads(1)
    recipe = RLRecipe(cfg, cfg.redis.url, source).setup()
    scorer = build_scorer("colour", cfg.rewards)
    history, n = [], 0
    for step in range(steps):
        t0 = time.perf_counter()
        batch = []
        for _ in range(cfg.rl.groups_per_step):
            task = source.task(n, "sync", 0, cfg.rl.group_size, recipe.sampling)
            n += 1
            refs = [(r.role, decode_image(r.image)) for r in task.references]
            ts = time.perf_counter()
            ro = recipe.policy.sample_group(task.prompt, refs, task.group_size, task.sampling, task.seed)
            tm = time.perf_counter()
            rewards = {"colour": [[v] for v in scorer.score(to_pil(ro.images))]}
            te = time.perf_counter()
            hdr = GroupHeader(group_id=task.task_id, task_id=task.task_id, policy_version=0, generator_id="sync",
                              blob_key="-", blob_bytes=0, blob_sha256="0" * 64, group_size=task.group_size,
                              n_refs=task.n_refs, timings={"sample": tm - ts, "score": te - tm})
            batch.append(ConsumedGroup(None, hdr, ro, rewards, 0))
        t1 = time.perf_counter()
        stats = recipe.update(batch)
        t2 = time.perf_counter()
        stats.update({"time/consume_s": t1 - t0, "time/update_s": t2 - t1, "data/images": len(batch) * cfg.rl.group_size})
        history.append(stats)
    return history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--generators", type=int, nargs="+", default=[1, 2], help="generator actor counts to run")
    ap.add_argument("--generator-threads", type=int, default=1, help="torch threads per generator actor")
    args = ap.parse_args()
    import ray
    from common.config import RayConfig
    from common.transport import EmbeddedRedis
    from dyref.launch import run_rl
    from services.learner.tasks import TaskSource, synthetic_cases
    from dyref.local import init_ray
    source = TaskSource(synthetic_cases(16, seed=5, size=64, ref_size=64, max_refs=3), seed=0)
    with EmbeddedRedis(data_dir=tempfile.mkdtemp(prefix="dyref-bench-"), appendonly=False) as server, \
            tempfile.TemporaryDirectory() as tmp:
        sync_hist = run_sync(make_cfg(server.url, f"{tmp}/sync", args.steps), source, args.steps)
        init_ray(RayConfig(num_cpus=2 + max(args.generators), object_store_memory_mb=128))
        runs = []
        for n in args.generators:
            cfg = make_cfg(server.url, f"{tmp}/dist{n}", args.steps)
            cfg.rl.generator_threads = args.generator_threads
            t0 = time.perf_counter()
            _, state, _ = run_rl(cfg, server.url, source, generators=n)
            runs.append((n, state.history, time.perf_counter() - t0))
        ray.shutdown()
    s_rate, s_step = rate(sync_hist, args.warmup)
    print(f"config: cpu-tiny, {cfg.rl.groups_per_step} groups x G={cfg.rl.group_size} per step, "
          f"{cfg.policy.num_inference_steps} steps, {cfg.policy.height}px, full FT; {args.steps} learner steps, "
          f"first {args.warmup} excluded; {os.cpu_count()} cores")
    print(f"synchronous (one process, 1 thread): {s_rate:7.1f} images/s   {s_step:.3f} s/step")
    for n, hist, wall in runs:
        d_rate, d_step = rate(hist, args.warmup)
        print(f"distributed, {n} generator actor(s):  {d_rate:7.1f} images/s   {d_step:.3f} s/step   "
              f"ratio {d_rate / s_rate:.2f} (target >= 0.90; wall incl. start-up {wall:.1f}s)")
        h = hist[args.warmup:]
        mean = lambda k: statistics.mean(x.get(k, 0.0) for x in h)  # noqa: E731
        print(f"  where the time goes per learner step: waiting for groups {mean('time/consume_s'):.3f}s, "
              f"update {mean('time/update_s'):.3f}s; per group on a generator: sample {mean('time/sample_s'):.3f}s, "
              f"score (overlapping the next sample) {mean('time/score_s'):.3f}s")
    hs = sync_hist[args.warmup:]
    print("where the time goes (synchronous, per step): "
          f"sample+score {statistics.mean(x['time/consume_s'] for x in hs):.3f}s, "
          f"update {statistics.mean(x['time/update_s'] for x in hs):.3f}s")


if __name__ == "__main__":
    main()
