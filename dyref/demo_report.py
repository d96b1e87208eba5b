"""The demo's report: a Markdown page with tables, paired differences, verdicts in words, PNG plots
(metrics by reference count, SFT and RL held-out curves, the reward per reference count) and a
sample grid (references | target | untrained | SFT | RL) per reference count."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_demo_report", "write_ablation_report", "gain_verdict", "fmt_cell"]

STAGES = ("untrained", "sft", "rl")
METRICS = ("placement", "reference_similarity", "target_similarity", "background_error")
LOWER_IS_BETTER = {"background_error"}
BACKGROUND_MARGIN = 0.01   # RL may not raise the background error by more than this (upper bound)


def fmt_cell(cell: dict | None, signed: bool = False) -> str:
    if not cell:
        return "–"
    lo, hi = cell["ci95"]
    f = "{:+.3f}" if signed else "{:.3f}"
    ci = f" [{f.format(lo)}, {f.format(hi)}]" if lo is not None else ""
    return f"{f.format(cell['mean'])}{ci} (n={cell['n']})"


def _counts(cells: dict) -> list[int]:
    return sorted(int(n) for n in cells if str(n) != "all")


def _cell(cells: dict, n) -> dict | None:
    return cells.get(n, cells.get(str(n)))


def gain_verdict(diff: dict[str, dict]) -> tuple[bool, list[str]]:
    """Does RL beat SFT as the demo promises? ``diff``: paired RL − SFT summaries per metric.

    Gain: placement and per-reference similarity each have a paired 95% interval above 0 overall
    and for at least two reference counts ≥ 2; background error's upper bound is ≤ +0.01.
    Returns (holds, sentences)."""
    lines, ok = [], True
    for m in ("placement", "reference_similarity"):
        cells = diff[m]
        allc = cells.get("all")
        above = [n for n in _counts(cells) if n >= 2 and _cell(cells, n)["ci95"][0] is not None
                 and _cell(cells, n)["ci95"][0] > 0]
        overall = bool(allc and allc["ci95"][0] is not None and allc["ci95"][0] > 0)
        good = overall and len(above) >= 2
        ok &= good
        what = m.replace("_", " ")
        lines.append(f"{what}: RL − SFT = {fmt_cell(allc, True)} overall; the paired interval is above 0 for "
                     f"{', '.join(f'{n} refs' for n in above) or 'no reference count ≥ 2'} → "
                     + ("**RL beats SFT**." if good else "**not a clear gain**."))
    bg = diff["background_error"].get("all")
    bg_ok = bool(bg and bg["ci95"][1] is not None and bg["ci95"][1] <= BACKGROUND_MARGIN)
    ok &= bg_ok
    lines.append(f"background error: RL − SFT = {fmt_cell(bg, True)} → " +
                 ("RL keeps the background (upper bound ≤ +0.01)." if bg_ok else
                  "**RL damages the background** (upper bound > +0.01)."))
    return ok, lines


def _direction(lo: float, hi: float, metric: str) -> tuple[bool, bool]:
    """(better, worse) for a paired difference's interval [lo, hi]: it excludes 0 on the good or the
    bad side of the metric (lower is better for LOWER_IS_BETTER)."""
    if metric in LOWER_IS_BETTER:
        return hi < 0, lo > 0
    return lo > 0, hi < 0


def _stage_verdict(before: dict, diff: dict, name_a: str, name_b: str, metric: str) -> str:
    allc = diff.get("all")
    if not allc or allc["ci95"][0] is None:
        return f"{metric.replace('_', ' ')}: too few cases to judge."
    lo, hi = allc["ci95"]
    better, worse = _direction(lo, hi, metric)
    word = f"**{name_b} beats {name_a}**" if better else (f"**{name_b} is worse than {name_a}**" if worse else
                                                           f"{name_b} and {name_a} are **not clearly different**")
    return (f"{metric.replace('_', ' ')}: {word} ({name_b} − {name_a} = {fmt_cell(allc, True)}, paired over cases; "
            f"{name_a} {before['all']['mean']:.3f}).")


def _running_mean(vals: np.ndarray, w: int) -> np.ndarray:
    """Mean of the non-NaN values among the last ``w`` (inclusive) at each position."""
    ok = ~np.isnan(vals)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, vals, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(vals))
    lo = np.maximum(0, i + 1 - w)
    return (c[i + 1] - c[lo]) / np.maximum(n[i + 1] - n[lo], 1)


def _plot(out: Path, summary: dict, history: list[dict], eval_history: list[dict]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    made = []
    chance = {int(k): v for k, v in summary.get("chance_placement", {}).items()}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS):
        for k, stage in enumerate(STAGES):
            cells = summary[stage][metric]
            ns = _counts(cells)
            if not ns:
                continue
            means = [_cell(cells, n)["mean"] for n in ns]
            lo = [m - (_cell(cells, n)["ci95"][0] if _cell(cells, n)["ci95"][0] is not None else m) for m, n in zip(means, ns)]
            hi = [(_cell(cells, n)["ci95"][1] if _cell(cells, n)["ci95"][1] is not None else m) - m for m, n in zip(means, ns)]
            ax.errorbar([n + (k - 1) * 0.1 for n in ns], means, yerr=[lo, hi], marker="o", capsize=3, label=stage)
        if metric == "placement" and chance:
            ax.plot(sorted(chance), [chance[n] for n in sorted(chance)], "k:", label="chance")
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("number of references")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(plots / "metrics_by_n_refs.png", dpi=100)
    plt.close(fig)
    made.append("metrics_by_n_refs.png")

    curves = [("SFT (held-out subset)", summary.get("sft_history", []), "step"), ("RL (evaluator, held-out subset)", eval_history, "step")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, (title, recs, x) in zip(axes, curves):
        keys = sorted({k for r in recs for k in r if k.startswith("eval/placement/")})
        for key in keys:
            ax.plot([r[x] for r in recs if key in r], [r[key] for r in recs if key in r], marker=".",
                    label=key.split("/")[-1].replace("all", "all refs") + ("" if key.endswith("all") else " refs"))
        ax.set_title(f"placement during {title}")
        ax.set_xlabel(f"{'SFT' if 'SFT' in title else 'learner'} step")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "training_curves.png", dpi=100)
    plt.close(fig)
    made.append("training_curves.png")

    if history:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
        steps = [h["step"] for h in history]
        keys = sorted({k for h in history for k in h if k.startswith("reward/subjects/n")})
        for key in keys:
            vals = np.array([h.get(key, np.nan) for h in history], float)
            ok = ~np.isnan(vals)
            axes[0].plot(np.array(steps)[ok], _running_mean(vals, 10)[ok], label=key.split("/n")[-1] + " refs")
        axes[0].set_title("RL reward: mean raw s_j of subjects (10-step mean)")
        axes[0].legend(fontsize=7)
        for ax, key, title in ((axes[1], "signals/dar_weight_std", "DAR weight std over groups"),
                               (axes[2], "losses/kl", "KL to the SFT policy")):
            ax.plot(steps, [h.get(key, float("nan")) for h in history])
            ax.set_title(title)
        for ax in axes:
            ax.set_xlabel("learner step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots / "rl_curves.png", dpi=100)
        plt.close(fig)
        made.append("rl_curves.png")
    return made


def _grid(out: Path, test, images: dict, per_count: int = 3) -> str | None:
    """references | target | untrained | SFT | RL, a few held-out cases per reference count."""
    from PIL import Image, ImageDraw
    if not all(s in images for s in STAGES):
        return None
    by_n: dict[int, list] = {}
    for c in test:
        by_n.setdefault(c.n_refs, []).append(c)
    cell, pad = 48, 4
    max_refs = max(by_n)
    cols = max_refs + 4
    rows = [c for n in sorted(by_n) for c in by_n[n][:per_count]]
    head = 14
    canvas = Image.new("RGB", (cols * (cell + pad) + pad, head + len(rows) * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(["refs"] + [""] * (max_refs - 1) + ["target", "untrained", "SFT", "RL"]):
        draw.text((pad + j * (cell + pad), 1), label, fill=(0, 0, 0))
    for i, c in enumerate(rows):
        y = head + pad + i * (cell + pad)
        tiles = [im for _, im, _ in c.references] + [None] * (max_refs - c.n_refs) + [c.target] + [
            Image.fromarray(images[s][c.index]) for s in STAGES]
        for j, im in enumerate(tiles):
            if im is not None:
                canvas.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (pad + j * (cell + pad), y))
    (out / "plots").mkdir(exist_ok=True)
    canvas.save(out / "plots" / "samples.png")
    return "samples.png"


def _table(summary_by_stage: dict[str, dict], metric: str, names, chance: dict | None = None, signed=False) -> list[str]:
    ns = sorted({n for s in names for n in _counts(summary_by_stage[s][metric])})
    lines = ["| | " + " | ".join(f"{n} refs" for n in ns) + " | all |", "|---|" + "---|" * (len(ns) + 1)]
    for s in names:
        cells = summary_by_stage[s][metric]
        lines.append(f"| {s} | " + " | ".join(fmt_cell(_cell(cells, n), signed) for n in ns)
                     + f" | {fmt_cell(cells.get('all'), signed)} |")
    if chance:
        lines.append("| chance | " + " | ".join(f"{chance.get(n, float('nan')):.3f}" for n in ns) + " | |")
    return lines


def write_demo_report(out: Path, summary: dict, history: list[dict], eval_history: list[dict], plan, test,
                      images: dict) -> Path:
    made = _plot(out, summary, history, eval_history)
    grid = _grid(out, test, images)
    ok, gain = gain_verdict(summary["rl_minus_sft"])
    chance = {int(k): v for k, v in summary.get("chance_placement", {}).items()}
    method = " + ".join([plan.advantage.upper()] + [n for n, on in (("DRS", plan.drs), ("DAR", plan.dar)) if on])
    lines = [f"# DyRef demo: untrained → SFT → RL ({method}) on the synthetic multi-reference task", "",
             f"Plan: {plan.n_train} train / {plan.n_test} held-out cases ({', '.join(plan.categories)}; at most "
             f"{plan.max_subjects} subject{'s' if plan.max_subjects > 1 else ''} per case), 1–{plan.max_refs} "
             f"references, {plan.size}px; SFT {plan.sft_steps} steps (text encoder trained), RL {plan.rl_steps} learner "
             f"steps rewarded by per-reference consistency, seed {plan.seed}. DRS τ calibrated from the SFT policy: "
             f"{summary.get('drs_tau') if summary.get('drs_tau') is None else round(summary['drs_tau'], 4)}. "
             "Intervals are 95% percentile bootstrap over cases; differences are paired per case (same case, same noise).",
             "", "## Verdict", "",
             ("**RL beats SFT on this run**: " if ok else "**The promised RL gain does not hold on this run**: ")
             + "placement and per-reference similarity must rise with paired intervals above 0 overall and for two "
               "reference counts ≥ 2, without raising the background error by more than 0.01.", ""]
    lines += [f"- {s}" for s in gain]
    lines += ["", "Stage by stage (all held-out cases):", ""]
    for m in METRICS:
        if summary["sft"][m]:
            lines.append("- " + _stage_verdict(summary["untrained"][m], summary["sft_minus_untrained"][m], "untrained", "SFT", m))
            lines.append("- " + _stage_verdict(summary["sft"][m], summary["rl_minus_sft"][m], "SFT", "RL", m))
    lines.append("")
    for m in METRICS:
        if not summary["sft"][m]:
            continue
        lines += [f"## {m.replace('_', ' ')} by number of references", ""]
        lines += _table(summary, m, STAGES, chance if m == "placement" else None)
        lines += ["", "RL − SFT, paired per case:", ""]
        lines += _table({"RL − SFT": summary["rl_minus_sft"]}, m, ["RL − SFT"], signed=True)
        lines.append("")
    for name in made:
        lines += [f"![{name[:-4]}](plots/{name})", ""]
    if grid:
        lines += ["## Samples (references | target | untrained | SFT | RL), held-out, per reference count", "",
                  f"![samples](plots/{grid})", ""]
    lines += ["## Run", "", f"Audit: {summary.get('audit')}", "", "Seconds per phase: " +
              ", ".join(f"{k} {v:.0f}" for k, v in summary.get("timings_s", {}).items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_ablation_report(out: Path, results: dict, plan, seeds, walls: dict[str, list[float]] | None = None) -> Path:
    """results[variant][seed] = held-out rows. Pooled over seeds: each variant's means and its paired
    per-case difference against GDPO (cases × seeds), by reference count."""
    from common.synthetic.evaluation import paired_difference, summarise
    folder = out / "ablation"
    folder.mkdir(parents=True, exist_ok=True)

    def pooled(variant):
        return [dict(r, index=(seed, r["index"])) for seed in seeds for r in results[variant].get(seed, [])]

    variants = [v for v in results if v != "sft"]
    lines = ["# RL ablation from the same SFT weights", "",
             f"Per seed ({', '.join(map(str, seeds))}): one SFT, then every variant for {plan.rl_steps} learner steps "
             f"with the same budget; {plan.n_test} held-out cases per seed, pooled over seeds (paired per case and seed). "
             "`shuffled` is the negative control: GDPO+DRS+DAR with advantages permuted across the batch.", ""]
    rows = {v: pooled(v) for v in ["sft"] + variants}
    against_gdpo: dict[str, dict[str, dict]] = {v: {} for v in variants if v != "gdpo"}
    for m in ("placement", "reference_similarity", "background_error"):
        summ = {v: {m: summarise(rows[v], m)} for v in ["sft"] + variants}
        lines += [f"## {m.replace('_', ' ')}", ""] + _table(summ, m, ["sft"] + variants) + [""]
        if "gdpo" in results:
            for v in against_gdpo:
                against_gdpo[v][m] = paired_difference(rows["gdpo"], rows[v], m)
            diffs = {f"{v} − gdpo": {m: by_metric[m]} for v, by_metric in against_gdpo.items()}
            diffs["gdpo − sft"] = {m: paired_difference(rows["sft"], rows["gdpo"], m)}
            lines += ["Paired differences:", ""] + _table(diffs, m, list(diffs), signed=True) + [""]
    if "gdpo" in results:
        lines += ["## What helps on this task", ""] + ablation_verdicts(against_gdpo) + [""]
    if walls:
        lines += ["RL wall time per run, mean over seeds (s): "
                  + ", ".join(f"{v} {sum(w) / len(w):.0f}" for v, w in walls.items() if w), ""]
    path = folder / "ablation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def ablation_verdicts(diffs: dict[str, dict[str, dict]]) -> list[str]:
    """One sentence per variant and metric from its paired difference against GDPO: where (overall
    or by reference count) the 95% interval lies above 0 (better), below 0 (worse), or spans 0.
    Background error is better when lower."""
    out = []
    for variant, by_metric in diffs.items():
        for metric, cells in by_metric.items():
            better, worse = [], []
            for key, c in cells.items():
                lo, hi = (c.get("ci95") or [None, None])
                if lo is None:
                    continue
                where = "overall" if key == "all" else f"{key} refs"
                up, down = _direction(lo, hi, metric)
                if up:
                    better.append(where)
                elif down:
                    worse.append(where)
            name = metric.replace("_", " ")
            if not better and not worse:
                out.append(f"- {variant}: {name} **not clearly different** from GDPO anywhere "
                           f"({fmt_cell(cells.get('all'), True)} overall)")
            else:
                parts = ([f"**better** ({', '.join(better)})"] if better else []) + \
                        ([f"**worse** ({', '.join(worse)})"] if worse else [])
                out.append(f"- {variant}: {name} {' and '.join(parts)} than GDPO "
                           f"({fmt_cell(cells.get('all'), True)} overall)")
    return out
