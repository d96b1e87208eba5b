"""The learner's trainer at real scale on one device: FSDP2 (or DDP) in a one-rank process group.

Run by scripts/gpu_check.sh after the sampling / train / weight-sync check (common/perf/gpu_check.py):
builds the real architecture with random weights (common/policy/arch), samples one group, and
then one :class:`~services.learner.trainer.Trainer` wrapped by ``--strategy`` takes ``--updates``
learner steps on it (the first is a warm-up), writes and reads its torch.distributed.checkpoint
folder, gathers the weights to publish, computes the weight probe, and syncs those bytes to a
consumer on the Redis path and on the direct path (common/perf/weight_sync.py: a local Ray and an
embedded Redis). Seconds and peak memory of each part go to ``<out-dir>/<card>-<date>-trainer.json``. A one-rank group runs the same wrapping,
mixed precision and checkpoint code as N workers; what it cannot show is the communication
(scripts/bench_learner_workers.py measures that with 2 workers).

    python -m services.learner.trainer_check [--profile gpu|cpu-tiny] [--strategy fsdp2] [--finetune lora]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("dyref.trainer_check")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="trainer_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["gpu", "cpu-tiny"], default="gpu")
    ap.add_argument("--arch", default="qwen-image-edit-2511")
    ap.add_argument("--family", default="flux2-klein", help="cpu-tiny profile: which tiny pipeline")
    ap.add_argument("--strategy", choices=["fsdp2", "ddp"], default="fsdp2")
    ap.add_argument("--finetune", choices=["lora", "full"], default="lora")
    ap.add_argument("--param-dtype", choices=["fp32", "bf16"], default=None, help="fsdp2 (default: bf16 on CUDA)")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10, help="sampling steps of the group")
    ap.add_argument("--refs", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--lora-rank", type=int, default=None)
    ap.add_argument("--updates", type=int, default=3, help="learner steps; the first is a warm-up")
    ap.add_argument("--sync-repeats", type=int, default=1,
                    help="weight sync of the gathered weights on the Redis and the direct path (0: skip)")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def run(args) -> dict:
    import torch.distributed as dist

    from common.config import RLConfig
    from common.perf.flops import card_name
    from common.perf.gpu_check import PROMPT, _build, _peak_mem_gb, _refs, _reset_peak, _sync
    from common.schemas import SamplingParams
    from common.transport import free_port
    from services.learner.trainer import Trainer, TrainGroup

    cuda = torch.cuda.is_available() and args.profile == "gpu"
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                            rank=0, world_size=1)
    try:
        build = argparse.Namespace(profile=args.profile, arch=args.arch, family=args.family, size=args.size,
                                   steps=args.steps, lora_rank=args.lora_rank)
        t = time.perf_counter()
        policy, pcfg, arch, notes = _build(build)
        if args.finetune == "full" and pcfg.finetune != "full":
            raise SystemExit("--finetune full: build the policy with finetune=full (the check builds LoRA policies)")
        dev = torch.device(pcfg.device)
        build_s = time.perf_counter() - t
        params = SamplingParams(num_inference_steps=args.steps, height=pcfg.height, width=pcfg.width,
                                dynamics="flow-sde", noise_level=1.0, train_steps=(0,), num_train_steps=1)
        ro = policy.sample_group(PROMPT, _refs(args.refs, pcfg.reference_size), args.group_size, params, seed=0)
        param_dtype = args.param_dtype or ("bf16" if cuda else "fp32")
        rl = RLConfig(kl={"beta": 0.04}, ema={"enabled": False},
                      learner={"strategy": args.strategy,
                               **({"param_dtype": param_dtype} if args.strategy == "fsdp2" else {})})
        _reset_peak(dev)
        t = time.perf_counter()
        trainer = Trainer(pcfg, rl, policy=policy)
        _sync(dev)
        wrap_s = time.perf_counter() - t
        group = TrainGroup(ro, torch.randn(args.group_size, generator=torch.Generator().manual_seed(0)),
                           torch.tensor(1.0))
        step_s = []
        for i in range(args.updates):
            t = time.perf_counter()
            stats = trainer.update([group], step=i)
            _sync(dev)
            step_s.append(time.perf_counter() - t)
        out: dict = {"strategy": args.strategy, "param_dtype": param_dtype if args.strategy == "fsdp2" else None,
                     "finetune": pcfg.finetune, "build_s": build_s, "wrap_s": wrap_s, "step_s": step_s,
                     "peak_memory_gb": _peak_mem_gb(dev), "loss": stats["losses/loss"],
                     "trainable_params": sum(int(p.numel()) for p in trainer.policy.trainable_parameters())}
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            trainer.save(Path(tmp) / "ckpt")
            out["save_s"] = time.perf_counter() - t
            out["checkpoint_mb"] = sum(f.stat().st_size for f in (Path(tmp) / "ckpt").iterdir()) / 2**20
            t = time.perf_counter()
            trainer.load(Path(tmp) / "ckpt")
            _sync(dev)
            out["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        state = trainer.trainable_state()
        out["gather_state_s"], out["state_mb"] = time.perf_counter() - t, len(state) / 2**20
        t = time.perf_counter()
        trainer.probe()
        _sync(dev)
        out["probe_s"] = time.perf_counter() - t
        if args.sync_repeats:
            out["weight_sync"] = _weight_sync(state, args.sync_repeats)
        return {"schema": "dyref.trainer_check/1", "card": card_name(), "device": str(dev), "arch": arch,
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "profile": args.profile,
                "group_size": args.group_size, "refs": args.refs, "size": pcfg.height, "trainer": out, "notes": notes}
    finally:
        dist.destroy_process_group()


def _weight_sync(state: bytes, repeats: int) -> list[dict]:
    """The gathered weights to one consumer on each path (docs/architecture.md, "Weight sync")."""
    import ray

    from common.perf.weight_sync import PATHS, init_local_ray, measure_path
    from common.transport import EmbeddedRedis
    mb = len(state) // 2**20
    started = init_local_ray(object_store_mb=4 * mb + 256)
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                EmbeddedRedis(data_dir=tmp, maxmemory_mb=4 * mb + 256, appendonly=False) as server:
            return [measure_path(p, server.url, state, repeats, tag="trainer-check") for p in PATHS]
    finally:
        if started:
            ray.shutdown()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    rep = run(args)
    from common.perf.flops import card_slug
    path = Path(args.out or Path(args.out_dir) / f"{card_slug(rep['card'])}-{rep['date'][:10]}-trainer.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep, indent=1))
    t = rep["trainer"]
    print(f"trainer {t['strategy']} ({t['finetune']}, {rep['arch']}) on {rep['card']}: step "
          f"{min(t['step_s'][1:] or t['step_s']):.3f} s, peak {t['peak_memory_gb']} GB, save {t['save_s']:.2f} s, "
          f"load {t['load_s']:.2f} s, gather {t['gather_state_s']:.2f} s ({t['state_mb']:.1f} MB), probe "
          f"{t['probe_s']:.3f} s -> {path}")
    for w in t.get("weight_sync", []):
        print(f"  weight sync {w['path']}: {w['mb']:.1f} MB in {w['total_s']:.3f} s ({w['mb_per_s']:.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
