"""The main job: the two-stage recipe end to end on the CPU, with a report, then /generate.

    untrained tiny policy --SFT--> stage 1 --RL (generators, Serve rewards, Redis, learner, DAR+DRS)--> stage 2

Every stage is evaluated on the same held-out synthetic split, case by case with the same noise
(common.synthetic.evaluation): placement, per-reference similarity, similarity to the target and
background error, by reference count, with 95% bootstrap intervals, and RL − SFT as paired
per-case differences. SFT is evaluated while it trains, and an evaluator follows the published
weights while RL runs. The report is Markdown + PNG plots; the final policy is served over HTTP.
A second run reuses the finished stages (SFT weights, RL checkpoint, evaluations) in its folder.
What the task is and why it is shaped this way: docs/learning.md.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from common.config import DyRefConfig

__all__ = ["DemoPlan", "demo_config", "run_demo", "run_ablation", "ABLATION_VARIANTS", "demo_namespace"]

log = logging.getLogger("dyref.demo")


@dataclass
class DemoPlan:
    """Sizes chosen so the whole job fits ~15 minutes on 2 CPU cores (docs/learning.md)."""
    seed: int = 0
    n_train: int = 2000
    n_test: int = 192
    size: int = 32
    max_refs: int = 3
    layout: str = "grid"           # which slots subjects go to (common/synthetic/spec.py SLOT_LAYOUTS)
    # one subject, with a background and/or a style reference for 2-3 references: the 0.4 M policy's
    # 3000-step SFT binds one subject but not two, so a task with 2-3 subjects left RL nothing to
    # start from at 2-3 references (docs/learning.md §5, "The task")
    max_subjects: int = 1          # subject references per case at most; the rest of a count is other roles
    categories: tuple[str, ...] = ("subject", "subject_bg", "subject_style", "subject_bg_style")
    sft_steps: int = 3000
    sft_eval_every: int = 500
    rl_steps: int = 300
    eval_steps: int = 8
    eval_subset: int = 48          # held-out cases scored while SFT and RL train
    rl_eval_every: int = 25        # published versions between two evaluations during RL
    rl_lr: float = 3e-4
    rl_min_refs: int = 1           # every count: trained on ≥ 2 only, 1-reference placement decayed (docs/learning.md §5)
    kl_beta: float = 0.2           # 0.02 let the backdrop drift (+0.03), 1.0 froze the policy (docs/learning.md §5)
    drs_tau_quantile: float = 0.5
    advantage: str = "grpo"        # GDPO amplified the scene term's tiny within-group spread (docs/learning.md §5)
    drs: bool = True
    dar: bool = True
    shuffle_advantages: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> "DemoPlan":
        """The plan a finished demo folder was run with (its plan.json)."""
        saved = json.loads((Path(folder) / "plan.json").read_text())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def demo_namespace(out: Path) -> str:
    """One Redis namespace per demo folder, kept in the folder: a run never meets another run's tasks
    or weights, and a deleted and re-created folder starts a new ledger instead of meeting its old one."""
    import uuid
    path = out / ".redis-namespace"
    if path.is_file():
        return path.read_text().strip()
    out.mkdir(parents=True, exist_ok=True)
    ns = "demo-" + uuid.uuid4().hex[:10]
    path.write_text(ns)
    return ns


def reward_components() -> list[dict]:
    """Per-reference consistency (docs/learning.md): one s_j per subject (DRS per reference, DAR
    reads their mean), the background reference's similarity, and the scene outside the subjects
    against the target (every case: what no reference describes must not drift); the style
    reference is neither rewarded nor measured (no style scorer worth trusting at random init).
    Under GDPO each component is normalised within its group on its own; the demo sums them (GRPO)."""
    return [{"name": "subjects", "scorer": "references", "against": "none", "roles": ["subject"], "weight": 1.0, "drs": True},
            {"name": "background", "scorer": "references", "against": "none", "roles": ["background"], "weight": 1.0},
            {"name": "scene", "scorer": "references", "against": "target", "weight": 1.0}]


def demo_config(base: DyRefConfig, out: Path, plan: DemoPlan, namespace: str | None = None) -> DyRefConfig:
    """The demo's settings on top of a profile: the 'small' tiny policy (lossless pixel codec, word
    tokenizer), full fine-tune with the text encoder trained in SFT (frozen in RL), RL rewarded by
    per-reference consistency with DRS (τ calibrated from the SFT policy) and DAR."""
    data = base.model_dump(mode="python")
    data["policy"].update(tiny_size="small", height=plan.size, width=plan.size, reference_size=16,
                          encoder_reference_size=16, max_sequence_length=64, num_inference_steps=plan.eval_steps,
                          eval_inference_steps=plan.eval_steps, finetune="full", init_weights=None,
                          train_text_encoder=True, seed=plan.seed,
                          sde={"dynamics": "flow-sde", "noise_level": 1.0, "train_steps": [0, 1, 2], "num_train_steps": 1})
    data["sft"].update(output_dir=str(out / "sft"), steps=plan.sft_steps, seed=plan.seed, lr=2e-3, batch_size=16,
                       timestep_sampling="logit-normal", timestep_shift=3.0, lr_decay="cosine", warmup_steps=20,
                       ref_curriculum=(0.3, 0.7), checkpoint_every=250, eval_every=plan.sft_eval_every)
    data["rl"].update(checkpoint_dir=str(out / "rl"), total_steps=plan.rl_steps, advantage=plan.advantage, group_size=8,
                      groups_per_step=4, seed=plan.seed, checkpoint_every=25, lr=plan.rl_lr, clip_range=1e-4,
                      eval_every=plan.rl_eval_every, shuffle_advantages=plan.shuffle_advantages)
    data["rl"]["drs"].update(enabled=plan.drs, tau="auto", tau_quantile=plan.drs_tau_quantile)
    data["rl"]["dar"].update(enabled=plan.dar, mode="normalized")
    data["rl"]["kl"].update(beta=plan.kl_beta, kind="v", reference="sft")
    data["rl"]["ema"].update(enabled=False)
    data["rewards"].update(components=reward_components(), reference_backend="looks")
    data["redis"].update(namespace=namespace or demo_namespace(out))
    for dotted, value in plan.extra.items():   # benchmark overrides, e.g. {"rl.minibatches": 2}
        node = data
        *path, last = dotted.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return DyRefConfig.from_dict(data)


def rl_policy_config(cfg: DyRefConfig, sft_weights: Path) -> DyRefConfig:
    """RL starts from the SFT weights; the text encoder loads from them and stays frozen."""
    c = cfg.model_copy(deep=True)
    c.policy.init_weights = str(sft_weights)
    c.policy.train_text_encoder = False
    return c


def rl_cases(cases, plan: DemoPlan):
    """The RL stage's tasks: training cases with at least ``plan.rl_min_refs`` references."""
    out = [c for c in cases if len(c.references) >= plan.rl_min_refs]
    if not out:
        raise ValueError(f"no training case has {plan.rl_min_refs} or more references")
    return out


# ---- the job -----------------------------------------------------------------------------------

def _cached(path: Path, make: Callable[[], object]):
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.write_text(json.dumps(value, indent=1))
    return value


def make_data(plan: DemoPlan):
    from common.synthetic import make_train_test, min_refs
    fewest = min(min_refs(c) for c in plan.categories)   # equal weight on every count the categories allow
    counts = {n: 1.0 for n in range(fewest, plan.max_refs + 1)}
    return make_train_test(plan.n_train, plan.n_test, plan.seed, size=plan.size, ref_size=16, max_refs=plan.max_refs,
                           categories=list(plan.categories), count_weights=counts, layout=plan.layout,
                           max_subjects=plan.max_subjects)


def eval_subset(test, k: int):
    """k held-out cases spread evenly over reference counts (the fixed split scored during training)."""
    by_n: dict[int, list] = {}
    for c in test:
        by_n.setdefault(c.n_refs, []).append(c)
    out, i = [], 0
    while len(out) < min(k, len(test)):
        for n in sorted(by_n):
            if i < len(by_n[n]) and len(out) < k:
                out.append(by_n[n][i])
        i += 1
    return out


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "image"} for r in rows]


def run_sft(cfg: DyRefConfig, cases, test, plan: DemoPlan, say: Callable[[str], None]):
    from common.synthetic.evaluation import evaluate_policy, flat_scores
    from services.learner.sft_recipe import SFTRecipe
    sft = SFTRecipe(cfg.policy, cfg.sft, cases).setup(total_steps=plan.sft_steps)
    subset = eval_subset(test, plan.eval_subset)

    def evaluate(policy) -> dict:
        return flat_scores(evaluate_policy(policy, subset, plan.eval_steps), ("placement", "background_error"))

    if sft.state.step < plan.sft_steps:
        say(f"SFT: {plan.sft_steps - sft.state.step} steps (from step {sft.state.step}), held-out check every "
            f"{plan.sft_eval_every} on {len(subset)} cases")

        def on_step(r: dict) -> None:
            if "eval/placement/all" in r:
                by_n = " ".join(f"{k.split('/')[-1]}:{v:.2f}" for k, v in r.items()
                                if k.startswith("eval/placement/") and not k.endswith("/all"))
                say(f"  sft step {r['step']} loss {r['losses/loss']:.4f} held-out placement {r['eval/placement/all']:.3f} "
                    f"({by_n}) background error {r['eval/background_error/all']:.3f}")
        sft.train(on_step=on_step, evaluate=evaluate)
    return sft


def run_demo(base: DyRefConfig, out: Path, plan: DemoPlan, redis_url: str, say: Callable[[str], None] = print,
             serve_port: int | None = None) -> dict:
    import torch

    from common.policy import build_policy
    from common.rewards.registry import build_scorer
    from common.synthetic import chance_levels
    from common.synthetic.evaluation import METRICS, evaluate_policy, paired_difference, summarise
    from dyref.launch import run_rl
    from services.learner.tasks import TaskSource, TrainingCase

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(base, out, plan)
    (out / "plan.json").write_text(json.dumps(asdict(plan), indent=1))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train, test = make_data(plan)
    cases = [TrainingCase(**c.training_case()) for c in train]
    timings["data"] = time.perf_counter() - t0
    similarity = build_scorer("similarity", cfg.rewards)
    say(f"data: {len(train)} train / {len(test)} held-out synthetic cases ({', '.join(plan.categories)}), "
        f"1-{plan.max_refs} references, {plan.size}px")
    images: dict[str, dict[int, object]] = {}

    def evaluate(policy, stage: str) -> list[dict]:
        rows = evaluate_policy(policy, test, plan.eval_steps, similarity=similarity, keep_images=True)
        images[stage] = {r["index"]: r["image"] for r in rows}
        return _strip(rows)

    def staged(stage: str, make_policy) -> list[dict]:
        t = time.perf_counter()
        path = out / f"eval_{stage}.json"
        if path.is_file() and (out / f"images_{stage}.npz").is_file():
            import numpy as np
            with np.load(out / f"images_{stage}.npz") as z:
                images[stage] = {int(k): z[k] for k in z.files}
            rows = json.loads(path.read_text())
        else:
            rows = evaluate(make_policy().eval(), stage)
            path.write_text(json.dumps(rows, indent=1))
            import numpy as np
            np.savez_compressed(out / f"images_{stage}.npz", **{str(k): v for k, v in images[stage].items()})
        timings[f"eval_{stage}"] = time.perf_counter() - t
        return rows

    # stage 0: untrained
    untrained = staged("untrained", lambda: build_policy(cfg.policy))
    say(f"untrained: held-out placement {summarise(untrained, 'placement')['all']['mean']:.3f}")

    # stage 1: SFT (resumes from its checkpoint; a finished one is reused)
    t0 = time.perf_counter()
    sft = run_sft(cfg, cases, test, plan, say)
    timings["sft"] = time.perf_counter() - t0
    sft_rows = staged("sft", lambda: sft.policy)
    say(f"SFT: held-out placement {summarise(sft_rows, 'placement')['all']['mean']:.3f}")

    # stage 2: RL through the distributed loop, starting from the SFT weights
    rl_cfg = rl_policy_config(cfg, sft.out / "trainable.safetensors")
    rl_cfg.redis.url, rl_cfg.redis.embedded = redis_url, False
    t0 = time.perf_counter()
    source = TaskSource(rl_cases(cases, plan), seed=plan.seed)
    recipe, state, statuses = run_rl(rl_cfg, redis_url, source, eval_cases=eval_subset(test, plan.eval_subset),
                                     on_step=lambda s: s["step"] % 10 == 0 and say(
        f"  rl step {s['step']} v{s['version']} reward subjects {s.get('reward/subjects/mean', float('nan')):.3f} "
        f"background {s.get('reward/background/mean', float('nan')):.3f} τ {s.get('signals/drs_tau', float('nan')):.3f} "
        f"kl {s.get('losses/kl', 0):.2e}"))
    timings["rl"] = time.perf_counter() - t0
    from services.evaluator.worker import read_eval_history
    eval_history = read_eval_history(recipe.r, recipe.keys)
    (out / "rl_history.json").write_text(json.dumps(state.history))
    (out / "rl_eval_history.json").write_text(json.dumps(eval_history))
    rl_rows = staged("rl", lambda: recipe.policy)
    say(f"RL: held-out placement {summarise(rl_rows, 'placement')['all']['mean']:.3f}")

    stages = {"untrained": untrained, "sft": sft_rows, "rl": rl_rows}
    summary: dict = {name: {m: summarise(rows, m) for m in METRICS} for name, rows in stages.items()}
    summary["rl_minus_sft"] = {m: paired_difference(sft_rows, rl_rows, m) for m in METRICS}
    summary["sft_minus_untrained"] = {m: paired_difference(untrained, sft_rows, m) for m in METRICS}
    summary["chance_placement"] = {int(k): v for k, v in chance_levels(test, layout=plan.layout).items()}
    summary["timings_s"] = timings
    summary["audit"] = recipe.audit()
    summary["drs_tau"] = state.drs_tau
    summary["workers"] = statuses
    summary["sft_history"] = [r for r in sft.state.history if any(k.startswith("eval/") for k in r)]
    from dyref.demo_report import write_demo_report
    write_demo_report(out, summary, state.history, eval_history, plan, test, images)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


# ---- ablation ----------------------------------------------------------------------------------

# name -> plan overrides; every variant starts from the same SFT weights with the same budget
ABLATION_VARIANTS: dict[str, dict] = {
    "grpo": dict(advantage="grpo", drs=False, dar=False),
    "gdpo": dict(advantage="gdpo", drs=False, dar=False),
    "gdpo+drs": dict(advantage="gdpo", drs=True, dar=False),
    "gdpo+dar": dict(advantage="gdpo", drs=False, dar=True),
    "gdpo+drs+dar": dict(advantage="gdpo", drs=True, dar=True),
    "shuffled": dict(advantage="gdpo", drs=True, dar=True, shuffle_advantages=True),
}


def run_ablation(base: DyRefConfig, out: Path, plan: DemoPlan, redis_url: str, seeds=(0, 1, 2),
                 variants: tuple[str, ...] = tuple(ABLATION_VARIANTS), say: Callable[[str], None] = print) -> dict:
    """RL variants from the same SFT weights (one SFT per seed, trained here when missing), held-out
    rows per variant and seed; paired per-case differences against GDPO. Results: out/ablation/."""
    import dataclasses

    import torch

    from common.synthetic.evaluation import evaluate_policy
    from dyref.launch import run_rl
    from services.learner.tasks import TaskSource, TrainingCase

    torch.set_num_threads(1)
    results: dict[str, dict[int, list[dict]]] = {v: {} for v in variants}
    walls: dict[str, list[float]] = {}
    for seed in seeds:
        splan = dataclasses.replace(plan, seed=seed)
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        cfg = demo_config(base, seed_dir, splan)
        train, test = make_data(splan)
        cases = [TrainingCase(**c.training_case()) for c in train]
        sft = run_sft(cfg, cases, test, splan, say)
        sft_rows = _cached(seed_dir / "eval_sft.json", lambda: _strip(evaluate_policy(sft.policy.eval(), test, splan.eval_steps)))
        results.setdefault("sft", {})[seed] = sft_rows
        for name in variants:
            vplan = dataclasses.replace(splan, **ABLATION_VARIANTS[name])
            run_dir = seed_dir / "ablation" / name.replace("+", "_")
            path = run_dir / "eval.json"
            if not path.is_file():
                c = rl_policy_config(demo_config(base, run_dir, vplan, namespace=f"{demo_namespace(run_dir)}"),
                                     sft.out / "trainable.safetensors")
                c.rl.eval_every = 0
                c.redis.url, c.redis.embedded = redis_url, False
                say(f"ablation seed {seed} {name}: RL {plan.rl_steps} steps")
                t0 = time.perf_counter()
                recipe, state, _ = run_rl(c, redis_url, TaskSource(rl_cases(cases, vplan), seed=seed))
                rows = _strip(evaluate_policy(recipe.policy.eval(), test, splan.eval_steps))
                run_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rows))
                (run_dir / "run.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "drs_tau": state.drs_tau,
                                                              "audit": recipe.audit()}))
            results[name][seed] = json.loads(path.read_text())
            run_json = run_dir / "run.json"
            if run_json.is_file():
                walls.setdefault(name, []).append(json.loads(run_json.read_text())["seconds"])
    from dyref.demo_report import write_ablation_report
    write_ablation_report(out, results, plan, seeds, walls)
    return results
