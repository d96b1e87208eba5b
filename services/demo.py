"""The main job: the two-stage recipe end to end on the CPU, with a report, then /generate.

    untrained tiny policy --SFT--> stage 1 --RL (generators, Serve rewards, Redis, learner, DAR+DRS)--> stage 2

Every stage is evaluated on the same held-out synthetic split (placement accuracy and similarity
to the ground-truth target, by reference count, with 95% bootstrap intervals), the report is
written as Markdown + PNG plots, and the final policy is served over HTTP. A second run reuses
the finished stages (SFT adapter, RL checkpoint, evaluations) found in the output folder.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from common.config import DyRefConfig

__all__ = ["DemoPlan", "demo_config", "run_demo", "evaluate", "run_ablation"]

log = logging.getLogger("dyref.demo")
# held-out metrics: placement accuracy and similarity to the target (higher is better), mean
# absolute error of the background outside the subjects' slots (lower is better)
METRICS = ("placement", "target_similarity", "background_error")


@dataclass
class DemoPlan:
    """Sizes chosen so the whole job fits ~15 minutes on 2 CPU cores (see scripts/sft_probe.py)."""
    seed: int = 0
    n_train: int = 2000
    n_test: int = 96
    size: int = 32
    max_refs: int = 6
    sft_steps: int = 1000
    rl_steps: int = 100
    eval_steps: int = 8
    rl_lr: float = 1e-4
    kl_beta: float = 0.04
    drs_tau: float = 0.65


def demo_namespace(out: Path) -> str:
    """One Redis namespace per demo folder: a run never meets another run's tasks or weights."""
    import hashlib
    return "demo-" + hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]


def demo_config(base: DyRefConfig, out: Path, plan: DemoPlan, namespace: str | None = None) -> DyRefConfig:
    """The demo's settings on top of a profile: the 'small' tiny policy (lossless pixel codec, word
    tokenizer), full fine-tune (2x faster per step than LoRA on a random base: scripts/sft_probe.py),
    RL rewarded by similarity to the ground-truth target with DRS, and DAR on."""
    data = base.model_dump(mode="python")
    data["policy"].update(tiny_size="small", height=plan.size, width=plan.size, reference_size=16,
                          encoder_reference_size=16, max_sequence_length=112, num_inference_steps=plan.eval_steps,
                          eval_inference_steps=plan.eval_steps, finetune="full", init_weights=None,
                          sde={"dynamics": "flow-sde", "noise_level": 1.0, "train_steps": [1, 2, 3], "num_train_steps": 1})
    data["sft"].update(output_dir=str(out / "sft"), steps=plan.sft_steps, seed=plan.seed, lr=2e-3, batch_size=16,
                       timestep_sampling="logit-normal", timestep_shift=3.0, lr_decay="cosine", warmup_steps=20,
                       ref_curriculum=(0.3, 0.7), checkpoint_every=100)
    data["rl"].update(checkpoint_dir=str(out / "rl"), total_steps=plan.rl_steps, advantage="gdpo", group_size=8,
                      groups_per_step=4, seed=plan.seed, checkpoint_every=10, lr=plan.rl_lr, clip_range=1e-4)
    data["rl"]["drs"].update(enabled=True, tau=plan.drs_tau)
    data["rl"]["dar"].update(enabled=True, mode="normalized")
    # KL to the SFT policy (DyRef's default reference; the paper's beta): without it, 100 noisy
    # full fine-tune steps at lr 1e-3 walked the policy away from SFT (reward and held-out fell)
    data["rl"]["kl"].update(beta=plan.kl_beta, kind="v", reference="sft")
    data["rl"]["ema"].update(enabled=False)
    data["rewards"].update(components=[{"name": "image_similarity", "scorer": "similarity", "weight": 1.0,
                                        "against": "target", "drs": True}])
    data["redis"].update(namespace=namespace or demo_namespace(out))
    return DyRefConfig.from_dict(data)


# ---- evaluation --------------------------------------------------------------------------------

def evaluate(policy, cases, steps: int, seed: int = 1, similarity=None) -> list[dict]:
    """Per held-out case: placement accuracy, and similarity to the target when a scorer is given."""
    from common.policy.families import to_pil
    from common.synthetic import background_error, placement_accuracy
    rows = []
    for c in cases:
        img = policy.generate(c.prompt, [(r, im) for r, im, _ in c.references], seed=seed + c.index,
                              num_inference_steps=steps, output_type="np")[0]
        row = {"index": c.index, "category": c.category, "n_refs": c.n_refs,
               "placement": float(placement_accuracy(img, c)), "background_error": float(background_error(img, c))}
        if similarity is not None:
            row["target_similarity"] = float(similarity.score(to_pil(img[None]), [[c.target]])[0][0])
        rows.append(row)
    return rows


def _summarise(rows: list[dict], metric: str) -> dict:
    from common.bench.report import bootstrap_ci
    by_n: dict[int, list[float]] = {}
    for r in rows:
        by_n.setdefault(r["n_refs"], []).append(r[metric])
    out = {}
    for n, vals in sorted(by_n.items()):
        lo, hi = bootstrap_ci(vals) if len(vals) > 1 else (None, None)
        out[n] = {"mean": sum(vals) / len(vals), "ci95": [lo, hi], "n": len(vals)}
    allv = [r[metric] for r in rows]
    lo, hi = bootstrap_ci(allv)
    out["all"] = {"mean": sum(allv) / len(allv), "ci95": [lo, hi], "n": len(allv)}
    return out


# ---- the job -----------------------------------------------------------------------------------

def _cached(path: Path, make: Callable[[], object]):
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.write_text(json.dumps(value, indent=1))
    return value


def run_demo(base: DyRefConfig, out: Path, plan: DemoPlan, redis_url: str, say: Callable[[str], None] = print,
             serve_port: int | None = None) -> dict:
    import torch

    from common.policy import build_policy
    from common.rewards.registry import build_scorer
    from common.synthetic import chance_levels, make_train_test
    from services.launch import run_rl
    from services.learner.sft_recipe import SFTRecipe
    from services.learner.tasks import TaskSource, TrainingCase

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(base, out, plan)
    (out / "plan.json").write_text(json.dumps(asdict(plan), indent=1))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train, test = make_train_test(plan.n_train, plan.n_test, plan.seed, size=plan.size, ref_size=16,
                                  max_refs=plan.max_refs)
    cases = [TrainingCase(c.prompt, list(c.references), c.target, c.index) for c in train]
    timings["data"] = time.perf_counter() - t0
    similarity = build_scorer("similarity", cfg.rewards)
    say(f"data: {len(train)} train / {len(test)} held-out synthetic cases, 1-{plan.max_refs} references, {plan.size}px")

    # stage 0: untrained
    t0 = time.perf_counter()
    untrained = _cached(out / "eval_untrained.json",
                        lambda: evaluate(build_policy(cfg.policy).eval(), test, plan.eval_steps, similarity=similarity))
    timings["eval_untrained"] = time.perf_counter() - t0
    say(f"untrained: placement {_summarise(untrained, 'placement')['all']['mean']:.3f}")

    # stage 1: SFT (resumes from its checkpoint; a finished one is reused)
    t0 = time.perf_counter()
    sft = SFTRecipe(cfg.policy, cfg.sft, cases).setup(total_steps=plan.sft_steps)
    if sft.state.step < plan.sft_steps:
        say(f"SFT: {plan.sft_steps - sft.state.step} steps (from step {sft.state.step})")
        sft.train(on_step=lambda r: r["step"] % 100 == 0 and say(f"  sft step {r['step']} loss {r['loss']:.4f}"))
    timings["sft"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sft_rows = _cached(out / "eval_sft.json", lambda: evaluate(sft.policy.eval(), test, plan.eval_steps, similarity=similarity))
    timings["eval_sft"] = time.perf_counter() - t0
    say(f"SFT: placement {_summarise(sft_rows, 'placement')['all']['mean']:.3f}")

    # stage 2: RL through the distributed loop, starting from the SFT adapter
    rl_cfg = cfg.model_copy(deep=True)
    rl_cfg.policy.init_weights = str(sft.out / "trainable.safetensors")
    rl_cfg.redis.url = redis_url
    rl_cfg.redis.embedded = False
    t0 = time.perf_counter()
    source = TaskSource(cases, seed=plan.seed)
    recipe, state, statuses = run_rl(rl_cfg, redis_url, source, on_step=lambda s: s["step"] % 5 == 0 and say(
        f"  rl step {s['step']} v{s['version']} reward {s.get('reward/image_similarity', float('nan')):.4f} "
        f"dar_w_std {s.get('dar_weight_std', 0):.3f}"))
    timings["rl"] = time.perf_counter() - t0
    (out / "rl_history.json").write_text(json.dumps(state.history))
    t0 = time.perf_counter()
    rl_rows = _cached(out / "eval_rl.json", lambda: evaluate(recipe.policy.eval(), test, plan.eval_steps, similarity=similarity))
    timings["eval_rl"] = time.perf_counter() - t0
    say(f"RL: placement {_summarise(rl_rows, 'placement')['all']['mean']:.3f}")

    stages = {"untrained": untrained, "sft": sft_rows, "rl": rl_rows}
    summary = {name: {m: _summarise(rows, m) for m in METRICS} for name, rows in stages.items()}
    summary["chance_placement"] = {int(k): v for k, v in chance_levels(test).items()}
    summary["timings_s"] = timings
    summary["audit"] = recipe.audit()
    summary["generators"] = statuses
    from services.demo_report import write_demo_report
    write_demo_report(out, summary, state.history, plan)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def run_ablation(base: DyRefConfig, out: Path, plan: DemoPlan, redis_url: str, say: Callable[[str], None] = print) -> dict:
    """RL from the same SFT adapter with GRPO only, +DRS, +DAR and +both; held-out score by count."""
    import torch

    from common.rewards.registry import build_scorer
    from common.synthetic import make_train_test
    from services.launch import run_rl
    from services.learner.tasks import TaskSource, TrainingCase

    torch.set_num_threads(1)
    cfg = demo_config(base, out, plan)
    sft_weights = out / "sft" / "trainable.safetensors"
    if not sft_weights.is_file():
        raise FileNotFoundError(f"no SFT weights at {sft_weights}: run `dyref demo` first (it trains stage 1)")
    train, test = make_train_test(plan.n_train, plan.n_test, plan.seed, size=plan.size, ref_size=16, max_refs=plan.max_refs)
    cases = [TrainingCase(c.prompt, list(c.references), c.target, c.index) for c in train]
    similarity = build_scorer("similarity", cfg.rewards)
    results = {}
    for name, drs, dar in (("grpo", False, False), ("+drs", True, False), ("+dar", False, True), ("+drs+dar", True, True)):
        run_dir = out / "ablation" / name.replace("+", "plus_")
        path = run_dir / "eval.json"
        if not path.is_file():
            c = cfg.model_copy(deep=True)
            c.policy.init_weights = str(sft_weights)
            c.rl.drs.enabled, c.rl.dar.enabled = drs, dar
            c.rl.checkpoint_dir = str(run_dir / "rl")
            c.redis.url, c.redis.embedded = redis_url, False
            c.redis.namespace = f"{demo_namespace(out)}-{name.replace('+', 'p')}"
            say(f"ablation {name}: RL {plan.rl_steps} steps")
            recipe, state, _ = run_rl(c, redis_url, TaskSource(cases, seed=plan.seed))
            run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(evaluate(recipe.policy.eval(), test, plan.eval_steps, similarity=similarity)))
        rows = json.loads(path.read_text())
        results[name] = {m: _summarise(rows, m) for m in METRICS}
    from services.demo_report import write_ablation_table
    write_ablation_table(out / "ablation", results)
    return results
