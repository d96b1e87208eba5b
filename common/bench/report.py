"""Aggregate per-case scores into the benchmark report: JSON, Markdown tables, PNG plots.

Input: ``scores.jsonl`` of a run, one line per case::

    {"index": 7, "category": "subject_bg", "n_refs": 4, "scores": {"clip_i": 0.71, "judge.text_adherence": null}}

A dimension absent from ``scores`` does not apply to the case (e.g. style on a category without a
style reference, judge −1); ``null`` means it applies but no value could be obtained (judge answer
never parsed, generation failed). Missing values are counted and shown, never averaged in as 0.

Every dimension is reported overall, by category and by number of references, as
mean, n (values), missing, and a 95% confidence interval of the mean: a percentile bootstrap
(``n_boot`` resamples of the cases with replacement, fixed seed, so a report is reproducible; no
normality assumption, which matters for bounded scores such as 0-10 judge marks). With n < 2 the
interval is null. Comparing two runs pairs cases by ``index``: delta = mean(B - A) over the cases
both runs scored, with a paired bootstrap interval.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["read_scores", "bootstrap_ci", "summarize", "compare", "to_markdown", "compare_markdown",
           "plot_summary", "write_report", "N_BOOT", "CI_METHOD"]

N_BOOT = 2000
CI_METHOD = f"95% percentile bootstrap of the mean ({N_BOOT} resamples, seed 0); null when n < 2"


def read_scores(run_dir: str | os.PathLike) -> list[dict]:
    """Per-case score records of a run; a later line for the same index replaces an earlier one."""
    path = Path(run_dir) / "scores.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: score the run first (dyref bench run)")
    by_index: dict[int, dict] = {}
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{ln}: not valid JSON: {e}") from None
            by_index[rec["index"]] = rec
    return list(by_index.values())


def bootstrap_ci(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean. values: [n] -> (low, high) or None if n < 2."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)   # [n_boot]
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _stat(vals: list[float | None]) -> dict:
    x = np.array([v for v in vals if v is not None], dtype=np.float64)
    ci = bootstrap_ci(x)
    return {"mean": float(x.mean()) if x.size else None, "n": int(x.size),
            "missing": sum(v is None for v in vals),
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}


def _dims(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for k in r.get("scores", {}):
            seen.setdefault(k, None)
    return list(seen)


def _group(records: list[dict], key) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return dict(sorted(out.items()))


def summarize(records: list[dict], notes: Iterable[str] = ()) -> dict:
    """Report JSON: overall / by_category / by_n_refs -> dim -> {mean, n, missing, ci_low, ci_high},
    plus case counts per group."""
    dims = _dims(records)

    def block(recs: list[dict]) -> dict:
        out = {d: _stat([r["scores"][d] for r in recs if d in r["scores"]]) for d in dims
               if any(d in r["scores"] for r in recs)}
        # the released analysis.py's "Average score": mean of the judge dimension means (no CI)
        jm = [s["mean"] for d, s in out.items() if d.startswith("judge.") and s["mean"] is not None]
        if jm:
            out["judge.average"] = {"mean": float(np.mean(jm)), "n": max(s["n"] for d, s in out.items()
                                    if d.startswith("judge.")), "missing": 0, "ci_low": None, "ci_high": None}
        return out

    by_cat = _group(records, lambda r: r["category"])
    by_n = _group(records, lambda r: int(r["n_refs"]))
    if any(d.startswith("judge.") for d in dims):
        dims = dims + ["judge.average"]
    return {
        "n_cases": len(records), "dims": dims, "ci_method": CI_METHOD, "notes": sorted(set(notes)),
        "overall": block(records),
        "by_category": {k: block(v) for k, v in by_cat.items()},
        "by_n_refs": {str(k): block(v) for k, v in by_n.items()},
        "cases_by_category": {k: len(v) for k, v in by_cat.items()},
        "cases_by_n_refs": {str(k): len(v) for k, v in by_n.items()},
    }


def compare(a: list[dict], b: list[dict], name_a: str = "A", name_b: str = "B") -> dict:
    """Paired comparison B − A over cases both runs scored, overall and by n_refs / category."""
    ia, ib = {r["index"]: r for r in a}, {r["index"]: r for r in b}
    common = sorted(set(ia) & set(ib))
    dims = [d for d in _dims(a) if d in set(_dims(b))]

    def block(idx: list[int]) -> dict:
        out = {}
        for d in dims:
            pairs = [(ia[i]["scores"][d], ib[i]["scores"][d]) for i in idx
                     if ia[i]["scores"].get(d) is not None and ib[i]["scores"].get(d) is not None]
            if not pairs:
                continue
            x = np.array(pairs, dtype=np.float64)                     # [n, 2]
            delta = x[:, 1] - x[:, 0]
            ci = bootstrap_ci(delta)
            out[d] = {name_a: float(x[:, 0].mean()), name_b: float(x[:, 1].mean()),
                      "delta": float(delta.mean()), "n": int(len(delta)),
                      "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}
        return out

    by_n = _group([ia[i] for i in common], lambda r: int(r["n_refs"]))
    by_cat = _group([ia[i] for i in common], lambda r: r["category"])
    return {"a": name_a, "b": name_b, "n_paired": len(common), "dims": dims, "ci_method": "paired " + CI_METHOD,
            "only_in_a": len(set(ia) - set(ib)), "only_in_b": len(set(ib) - set(ia)),
            "overall": block(common),
            "by_n_refs": {str(k): block([r["index"] for r in v]) for k, v in by_n.items()},
            "by_category": {k: block([r["index"] for r in v]) for k, v in by_cat.items()}}


def _fmt(s: dict | None) -> str:
    if not s or s["mean"] is None:
        return "–" if not s else f"missing {s['missing']}"
    txt = f"{s['mean']:.3f}"
    if s["ci_low"] is not None:
        txt += f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
    txt += f" (n={s['n']}" + (f", miss {s['missing']})" if s["missing"] else ")")
    return txt


def _table(title: str, rows: dict, counts: dict, dims: list[str], label: str) -> list[str]:
    lines = [f"### {title}", "", f"| {label} | cases | " + " | ".join(dims) + " |",
             "|---|---|" + "---|" * len(dims)]
    for k, block in rows.items():
        lines.append(f"| {k} | {counts.get(k, '')} | " + " | ".join(_fmt(block.get(d)) for d in dims) + " |")
    return lines + [""]


def to_markdown(summary: dict, title: str = "OmniRef-Bench report") -> str:
    dims = summary["dims"]
    lines = [f"# {title}", "", f"Cases: {summary['n_cases']}. Cells: mean [95% CI] (n values, missing).",
             f"CI: {summary['ci_method']}.", ""]
    if summary["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    lines += _table("Overall", {"all": summary["overall"]}, {"all": summary["n_cases"]}, dims, "set")
    lines += _table("By number of references", summary["by_n_refs"], summary["cases_by_n_refs"], dims, "n_refs")
    lines += _table("By category", summary["by_category"], summary["cases_by_category"], dims, "category")
    return "\n".join(lines)


def compare_markdown(cmp: dict) -> str:
    a, b = cmp["a"], cmp["b"]
    lines = [f"# {b} vs {a}", "", f"Paired cases: {cmp['n_paired']} (only in {a}: {cmp['only_in_a']}, "
             f"only in {b}: {cmp['only_in_b']}). Delta = {b} − {a}; CI: {cmp['ci_method']}.", ""]

    def table(title: str, groups: dict, label: str) -> list[str]:
        out = [f"### {title}", "", f"| {label} | dim | {a} | {b} | delta [95% CI] | n |", "|---|---|---|---|---|---|"]
        for g, block in groups.items():
            for d, s in block.items():
                ci = f" [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]" if s["ci_low"] is not None else ""
                out.append(f"| {g} | {d} | {s[a]:.3f} | {s[b]:.3f} | {s['delta']:+.3f}{ci} | {s['n']} |")
        return out + [""]

    lines += table("Overall", {"all": cmp["overall"]}, "set")
    lines += table("By number of references", cmp["by_n_refs"], "n_refs")
    lines += table("By category", cmp["by_category"], "category")
    return "\n".join(lines)


def plot_summary(groups: dict[str, dict], dims: list[str], path: Path, xlabel: str,
                 runs: dict[str, dict] | None = None) -> Path:
    """One subplot per dimension: bar per group (n_refs or category) with 95% CI error bars.

    groups: {run_name: summary["by_n_refs"]-like dict}; several runs are drawn side by side.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for g in groups.values() for k in g}, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    ncol = min(3, max(1, len(dims)))
    nrow = math.ceil(len(dims) / ncol) if dims else 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(keys))
    for ax, d in zip(axes.flat, dims):
        for j, (run, g) in enumerate(groups.items()):
            st = [g.get(k, {}).get(d) for k in keys]
            m = np.array([s["mean"] if s and s["mean"] is not None else np.nan for s in st])
            lo = np.array([s["mean"] - s["ci_low"] if s and s["ci_low"] is not None else 0 for s in st])
            hi = np.array([s["ci_high"] - s["mean"] if s and s["ci_high"] is not None else 0 for s in st])
            ax.bar(x + (j - (len(groups) - 1) / 2) * width, m, width, yerr=[lo, hi], capsize=2, label=run)
        ax.set_title(d, fontsize=9)
        ax.set_xticks(x, keys, rotation=45 if not all(k.isdigit() for k in keys) else 0, fontsize=7, ha="right"
                      if not all(k.isdigit() for k in keys) else "center")
        ax.set_xlabel(xlabel, fontsize=8)
        if len(groups) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(dims):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(run_dir: str | os.PathLike, compare_dir: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None) -> dict:
    """Write report.json, report.md and plots/*.png for a run (and its comparison with another).

    Returns {"json": path, "markdown": path, "plots": [paths], "summary": dict}.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    records = read_scores(run_dir)
    notes_path = run_dir / "score_notes.json"
    notes = json.loads(notes_path.read_text()) if notes_path.is_file() else []
    summary = summarize(records, notes)
    name = run_dir.name
    doc = {"run": name, "summary": summary}
    md = to_markdown(summary, f"OmniRef-Bench report: {name}")
    plots = [plot_summary({name: summary["by_n_refs"]}, summary["dims"], out / "plots" / "by_n_refs.png", "references"),
             plot_summary({name: summary["by_category"]}, summary["dims"], out / "plots" / "by_category.png", "category")]
    if compare_dir is not None:
        other = Path(compare_dir)
        orecs = read_scores(other)
        cmp = compare(orecs, records, other.name, name if name != other.name else f"{name} (B)")
        osum = summarize(orecs)
        doc["compare"] = cmp
        md += "\n\n" + compare_markdown(cmp)
        plots.append(plot_summary({other.name: osum["by_n_refs"], cmp["b"]: summary["by_n_refs"]}, cmp["dims"],
                                  out / "plots" / "compare_by_n_refs.png", "references"))
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    (out / "report.md").write_text(md)
    return {"json": out / "report.json", "markdown": out / "report.md", "plots": plots, "summary": summary}
