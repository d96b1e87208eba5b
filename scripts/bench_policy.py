#!/usr/bin/env python
"""Benchmark the policy's rollout path against a plain diffusers pipeline call of the same size.

For each family it times, interleaved in one process (so both see the same machine load):
  pipeline  ``pipe(prompt, image=refs, num_images_per_prompt=G, ...)``: the plain diffusers call
  generate  ``policy.generate(..., n=G)``: our ODE loop on the same components, no bookkeeping
  group     ``policy.sample_group(..., G)``: SDE on the drawn train steps + stored transitions + log-probs
and prints seconds per group (median of --repeats) and the overhead group / pipeline (target <= 1.10).
Not a test: numbers depend on the box. Usage: scripts/bench_policy.py [--family both] [--group-size 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from common.config import load_config  # noqa: E402
from common.policy import build_policy  # noqa: E402
from common.schemas import SamplingParams  # noqa: E402


@contextmanager
def _qwen_sizes(cfg):
    # only for the plain pipeline call: the policy itself never touches these module constants
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as m
    old = m.VAE_IMAGE_SIZE, m.CONDITION_IMAGE_SIZE
    m.VAE_IMAGE_SIZE, m.CONDITION_IMAGE_SIZE = cfg.reference_size ** 2, cfg.encoder_reference_size ** 2
    try:
        yield
    finally:
        m.VAE_IMAGE_SIZE, m.CONDITION_IMAGE_SIZE = old


def _refs(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)).resize((size, size))
            for _ in range(n)]


def bench(family: str, args) -> dict:
    pcfg = load_config(args.profile).policy.model_copy(update={"family": family})
    pol = build_policy(pcfg)
    refs = _refs(args.refs, pcfg.reference_size)
    typed = [("subject", r) for r in refs]
    n = args.steps or pcfg.num_inference_steps
    params = SamplingParams.from_config(pcfg, num_inference_steps=n,
                                        train_steps=tuple(s for s in pcfg.sde.train_steps if s < n) or (0,))
    prompt = "a red apple on a wooden table, in the style of image 2"
    g = args.group_size

    def pipeline():
        kw = dict(prompt=prompt, image=refs, height=pcfg.height, width=pcfg.width, num_inference_steps=n,
                  num_images_per_prompt=g, output_type="np", generator=torch.Generator().manual_seed(0))
        if family == "flux2-klein":
            return pol.pipe(guidance_scale=1.0, max_sequence_length=pcfg.max_sequence_length,
                            text_encoder_out_layers=tuple(pol.family.out_layers or (9, 18, 27)), **kw)
        with _qwen_sizes(pcfg):
            return pol.pipe(true_cfg_scale=1.0, **kw)

    runs = {"pipeline": pipeline,
            "generate": lambda: pol.generate(prompt, typed, n=g, num_inference_steps=n, output_type="np"),
            "group": lambda: pol.sample_group(prompt, typed, g, params, seed=0)}
    times = {k: [] for k in runs}
    for f in runs.values():  # warm-up (first-call allocations, lazy imports)
        f()
    for _ in range(args.repeats):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"family": family, "G": g, "steps": n, "refs": args.refs, **med,
            "overhead": med["group"] / med["pipeline"], "overhead_vs_generate": med["group"] / med["generate"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu-tiny")
    ap.add_argument("--family", default="both", choices=["both", "flux2-klein", "qwen-image-edit-plus"])
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--refs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="inference steps (default: the profile's)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fams = ["flux2-klein", "qwen-image-edit-plus"] if args.family == "both" else [args.family]
    print(f"{'family':22s} {'G':>3s} {'steps':>5s} {'refs':>4s} {'pipeline s':>10s} {'generate s':>10s} "
          f"{'group s':>8s} {'group/pipeline':>14s} {'group/generate':>14s}")
    for fam in fams:
        r = bench(fam, args)
        flag = "ok" if r["overhead"] <= 1.10 else "ABOVE 10% TARGET"
        print(f"{r['family']:22s} {r['G']:3d} {r['steps']:5d} {r['refs']:4d} {r['pipeline']:10.4f} {r['generate']:10.4f} "
              f"{r['group']:8.4f} {r['overhead']:14.3f} {r['overhead_vs_generate']:14.3f}  {flag}")


if __name__ == "__main__":
    main()
