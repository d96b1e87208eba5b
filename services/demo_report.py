"""The demo's report: a Markdown page with tables and verdicts, and PNG plots."""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_demo_report", "write_ablation_table", "verdict"]

STAGES = ("untrained", "sft", "rl")
METRICS = ("placement", "target_similarity", "background_error")


def _fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    lo, hi = cell["ci95"]
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{cell['mean']:.3f}{ci} (n={cell['n']})"


LOWER_IS_BETTER = {"background_error"}


def verdict(a: dict, b: dict, name_a: str, name_b: str, metric: str = "placement") -> str:
    """Plain words on whether b beats a overall on `metric`, judged by the 95% intervals."""
    sign = -1 if metric in LOWER_IS_BETTER else 1
    ma, mb = a["all"]["mean"], b["all"]["mean"]
    (alo, ahi), (blo, bhi) = a["all"]["ci95"], b["all"]["ci95"]
    clear = (blo is not None and ahi is not None and blo > ahi) if sign > 0 else \
        (bhi is not None and alo is not None and bhi < alo)
    what = metric.replace("_", " ")
    if clear:
        return f"{what}: **{name_b} beats {name_a}** ({mb:.3f} vs {ma:.3f}; the 95% intervals do not overlap)."
    if sign * (mb - ma) > 0:
        return (f"{what}: {name_b} is better than {name_a} ({mb:.3f} vs {ma:.3f}) but the 95% intervals overlap: "
                f"**not a clear gain** at this size.")
    return f"{what}: **{name_b} does not beat {name_a}** ({mb:.3f} vs {ma:.3f})."


def _plot_by_count(ax, summary: dict, metric: str, chance: dict | None = None) -> None:
    for k, stage in enumerate(STAGES):
        cells = {n: c for n, c in summary[stage][metric].items() if n != "all"}
        ns = sorted(int(n) for n in cells)
        means = [cells[n if n in cells else str(n)]["mean"] for n in ns]
        lo = [cells[n if n in cells else str(n)]["ci95"][0] for n in ns]
        hi = [cells[n if n in cells else str(n)]["ci95"][1] for n in ns]
        err = [[m - (l if l is not None else m) for m, l in zip(means, lo)],
               [(h if h is not None else m) - m for m, h in zip(means, hi)]]
        ax.errorbar([n + (k - 1) * 0.12 for n in ns], means, yerr=err, marker="o", capsize=3, label=stage)
    if chance:
        ns = sorted(int(n) for n in chance)
        ax.plot(ns, [chance[n] for n in ns], "k:", label="chance")
    ax.set_xlabel("number of references")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()


def write_demo_report(out: Path, summary: dict, history: list[dict], plan) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    chance = {int(k): v for k, v in summary.get("chance_placement", {}).items()}
    for metric in METRICS:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        _plot_by_count(ax, summary, metric, chance if metric == "placement" else None)
        ax.set_title(f"held-out {metric.replace('_', ' ')} by reference count")
        fig.tight_layout()
        fig.savefig(plots / f"{metric}_by_n_refs.png", dpi=110)
        plt.close(fig)
    if history:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        steps = [h["step"] for h in history]
        for ax, key, title in ((axes[0], "reward/image_similarity", "RL reward (raw similarity)"),
                               (axes[1], "dar_weight_std", "DAR weight std over groups"),
                               (axes[2], "kl", "KL to the SFT policy")):
            ax.plot(steps, [h.get(key, float("nan")) for h in history])
            ax.set_title(title)
            ax.set_xlabel("learner step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots / "rl_curves.png", dpi=110)
        plt.close(fig)

    lines = ["# DyRef demo: untrained → SFT → RL (DAR + DRS) on the synthetic multi-reference task", "",
             f"Plan: {plan.n_train} train / {plan.n_test} held-out cases, 1–{plan.max_refs} references, "
             f"{plan.size}px, SFT {plan.sft_steps} steps, RL {plan.rl_steps} learner steps, seed {plan.seed}. "
             "Intervals are 95% percentile bootstrap over cases.", "",
             "## Verdicts (all held-out cases)", ""]
    for metric in METRICS:
        lines.append("- " + verdict(summary["untrained"][metric], summary["sft"][metric], "untrained", "SFT", metric))
        lines.append("- " + verdict(summary["sft"][metric], summary["rl"][metric], "SFT", "RL", metric))
    lines.append("")
    for metric in METRICS:
        ns = sorted({int(n) for s in STAGES for n in summary[s][metric] if n != "all"})
        lines += [f"## {metric.replace('_', ' ')} by number of references", "",
                  "| stage | " + " | ".join(f"{n} refs" for n in ns) + " | all |",
                  "|---|" + "---|" * (len(ns) + 1)]
        for s in STAGES:
            cells = summary[s][metric]
            lines.append(f"| {s} | " + " | ".join(_fmt(cells.get(n, cells.get(str(n)))) for n in ns)
                         + f" | {_fmt(cells['all'])} |")
        if metric == "placement" and chance:
            lines.append("| chance | " + " | ".join(f"{chance.get(n, float('nan')):.3f}" for n in ns) + " | |")
        lines += ["", f"![{metric}](plots/{metric}_by_n_refs.png)", ""]
    lines += ["## RL", "", "![curves](plots/rl_curves.png)", "",
              f"Audit: {summary.get('audit')}", "", "Seconds per phase: " +
              ", ".join(f"{k} {v:.0f}" for k, v in summary.get("timings_s", {}).items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_ablation_table(out: Path, results: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# RL ablation from the same SFT weights (held-out, by number of references)", ""]
    for metric in METRICS:
        ns = sorted({int(n) for r in results.values() for n in r[metric] if n != "all"})
        lines += [f"## {metric.replace('_', ' ')}", "",
                  "| variant | " + " | ".join(f"{n} refs" for n in ns) + " | all |", "|---|" + "---|" * (len(ns) + 1)]
        for name, r in results.items():
            cells = r[metric]
            lines.append(f"| {name} | " + " | ".join(_fmt(cells.get(n, cells.get(str(n)))) for n in ns)
                         + f" | {_fmt(cells['all'])} |")
        lines.append("")
    path = out / "ablation.md"
    path.write_text("\n".join(lines) + "\n")
    return path
