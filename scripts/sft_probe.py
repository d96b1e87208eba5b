"""How much does a few CPU-minutes of SFT buy on the synthetic task? (sizing the two-stage demo)

Trains the SFT recipe on a synthetic train split for a wall-clock budget, then scores untrained vs
SFT policies on a held-out split: placement_accuracy by reference count (mean, 95% CI, n), with the
"right subjects at random slots" chance level beside it.

    .venv/bin/python scripts/sft_probe.py --seconds 210 --finetune lora --rank 32 --out runs/probe.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.config import LoraConfig, PolicyConfig, SFTConfig  # noqa: E402
from common.policy import build_policy  # noqa: E402
from common.synthetic import chance_levels, make_train_test, placement_accuracy  # noqa: E402
from services.learner.sft_recipe import SFTRecipe  # noqa: E402


def evaluate(policy, cases, steps: int) -> dict[int, list[float]]:
    out = defaultdict(list)
    for c in cases:
        img = policy.generate(c.prompt, [(r, im) for r, im, _ in c.references], seed=c.index,
                              num_inference_steps=steps, output_type="np")[0]
        out[c.n_refs].append(placement_accuracy(img, c))
    return dict(sorted(out.items()))


def summary(scores: dict[int, list[float]]) -> dict:
    rows = {}
    for n, v in scores.items():
        a = np.asarray(v)
        rows[n] = {"mean": round(float(a.mean()), 3), "ci95": round(1.96 * float(a.std(ddof=1)) / math.sqrt(len(a)), 3)
                   if len(a) > 1 else None, "n": len(a)}
    allv = np.concatenate([np.asarray(v) for v in scores.values()])
    rows["all"] = {"mean": round(float(allv.mean()), 3), "n": int(allv.size)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=210, help="Training wall-clock budget.")
    ap.add_argument("--finetune", choices=["lora", "full"], default="lora")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny-size", choices=["tiny", "small"], default="small")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=120, help="Held-out cases (uniform over 1..6 references).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-steps", type=int, default=8)
    ap.add_argument("--curriculum", type=float, nargs=2, default=(0.3, 0.7))
    ap.add_argument("--train-text-encoder", action="store_true", help="Train the text encoder jointly.")
    ap.add_argument("--max-refs", type=int, default=6)
    ap.add_argument("--categories", nargs="*", default=None, help="Synthetic categories (default all).")
    ap.add_argument("--steps", type=int, default=None, help="Fixed step count instead of the time budget.")
    ap.add_argument("--max-seq", type=int, default=112, help="Text tokens (padded).")
    ap.add_argument("--te-layers", type=int, nargs="*", default=None, help="Text-encoder hidden states fed to the transformer.")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.te_layers:
        import common.policy.families.flux2_klein as flux2_klein
        flux2_klein.SMALL_FLUX_OUT_LAYERS = tuple(a.te_layers)
    ref = a.size // 2
    train, test = make_train_test(a.n_train, a.n_test, a.seed, size=a.size, ref_size=ref, max_refs=a.max_refs,
                                  categories=a.categories)
    pcfg = PolicyConfig(tiny_size=a.tiny_size, height=a.size, width=a.size, reference_size=max(16, ref),
                        max_sequence_length=a.max_seq, finetune=a.finetune, seed=a.seed, eval_inference_steps=a.eval_steps,
                        train_text_encoder=a.train_text_encoder,
                        lora=LoraConfig(rank=a.rank, alpha=a.rank))
    untrained = summary(evaluate(build_policy(pcfg), test, a.eval_steps))
    print("untrained", json.dumps(untrained), flush=True)

    def recipe(steps, out):
        sft = SFTConfig(lr=a.lr, batch_size=a.batch, steps=steps, timestep_sampling="logit-normal", timestep_shift=3.0,
                        lr_decay="cosine", min_lr_ratio=0.1, warmup_steps=10, ref_curriculum=tuple(a.curriculum),
                        checkpoint_every=10 ** 9, output_dir=out, seed=a.seed)
        return SFTRecipe(pcfg, sft, train).setup(resume=False)

    # time 15 steps, then size the run to the budget (the lr schedule and curriculum need the total)
    t = time.perf_counter()
    r = recipe(15, f"/tmp/sft_probe_{os.getpid()}_t")
    for _ in range(3):
        r.train_step()
    t_enc = time.perf_counter()
    for _ in range(12):
        r.train_step()
    s_step = (time.perf_counter() - t_enc) / 12
    steps = a.steps or max(20, int((a.seconds - (t_enc - t)) / s_step))
    print(f"{s_step:.3f} s/step -> {steps} steps", flush=True)
    r = recipe(steps, f"/tmp/sft_probe_{os.getpid()}")
    t0 = time.perf_counter()
    r.train(on_step=lambda s: print(s["step"], round(s["losses/loss"], 4), s["data/n_refs"], round(time.perf_counter() - t0),
                                    flush=True) if s["step"] % 100 == 0 else None)
    train_s = time.perf_counter() - t0
    trained = summary(evaluate(r.policy.eval(), test, a.eval_steps))
    chance = {n: round(v, 3) for n, v in chance_levels(test, draws=4, seed=1).items()}
    res = {"args": vars(a), "s_per_step": round(s_step, 3), "steps": steps, "train_s": round(train_s, 1),
           "trainable_params": sum(p.numel() for p in r.policy.trainable_parameters()),
           "untrained": untrained, "sft": trained, "chance": chance}
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
