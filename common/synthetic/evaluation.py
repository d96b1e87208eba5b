"""Held-out evaluation of a policy on synthetic cases: one row per case, summaries by reference count.

Used while SFT trains (every ``sft.eval_every`` steps), by the RL evaluator service (every few
published weight versions) and by the demo's report, so the three agree on what a number means:

- ``placement``: common.synthetic.metrics.placement_accuracy (colour in the right slot, no copies
  elsewhere; chance ≈ 0.1).
- ``reference_similarity``: mean over the case's subject and background references of the raw
  per-reference score s_j (common.rewards.per_reference; 1 = every reference in place).
- ``background_error``: mean absolute error outside the subjects' slots (lower is better).
- ``target_similarity`` (when a similarity scorer is given): the paper's released reward, one
  embedding similarity of the whole image to the ground truth.

Generation is the deterministic ODE with per-case noise (``seed + index``), so two policies
evaluated on the same cases can be compared case by case (:func:`paired_difference`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from common.roles import Role
from common.synthetic.cases import SyntheticCase, to_pil
from common.synthetic.metrics import background_error, placement_accuracy

__all__ = ["METRICS", "LOWER_IS_BETTER", "evaluate_policy", "summarise", "paired_difference", "flat_scores",
           "reference_inputs"]

METRICS = ("placement", "reference_similarity", "target_similarity", "background_error")
LOWER_IS_BETTER = frozenset({"background_error"})
SCORED_ROLES: tuple[Role, ...] = ("subject", "background")


def reference_inputs(case: SyntheticCase):
    """The case's references as the per-reference scorer takes them (with their boxes)."""
    from common.rewards.per_reference import ReferenceInput
    return [ReferenceInput(role, im, box) for (role, im, _), box in zip(case.references, case.reference_boxes())]


def evaluate_policy(policy, cases: Sequence[SyntheticCase], steps: int, seed: int = 1, references=None,
                    similarity=None, keep_images: bool = False) -> list[dict]:
    """One row per case: index, category, n_refs and the metrics (module docstring).

    references: a PerReferenceScorer (None: build the weight-free ``looks`` one); similarity: a
    SimilarityScorer for ``target_similarity`` (None: that metric is left out). keep_images adds the
    generated uint8 (H, W, 3) array under ``image`` (for sample grids)."""
    if references is None:
        from common.rewards.per_reference import PerReferenceScorer
        references = PerReferenceScorer("looks")
    rows = []
    for c in cases:
        img = policy.generate(c.prompt, [(r, im) for r, im, _ in c.references], seed=seed + c.index,
                              num_inference_steps=steps, output_type="np")[0]
        pil = to_pil(img.astype(np.float32) / 255.0)
        s = references.score([pil], [reference_inputs(c)], roles=SCORED_ROLES)[0]
        vals = [v for v in s if v is not None]
        row = {"index": c.index, "category": c.category, "n_refs": c.n_refs,
               "placement": float(placement_accuracy(img, c)), "background_error": float(background_error(img, c)),
               "reference_similarity": float(np.mean(vals)) if vals else None}
        if similarity is not None:
            row["target_similarity"] = float(similarity.score([pil], [[c.target]])[0][0])
        if keep_images:
            row["image"] = img
        rows.append(row)
    return rows


def _ci(values: np.ndarray) -> list[float | None]:
    from common.bench.report import bootstrap_ci
    ci = bootstrap_ci(values) if values.size > 1 else None
    return [ci[0], ci[1]] if ci else [None, None]


def summarise(rows: Sequence[dict], metric: str) -> dict:
    """{n_refs: {mean, ci95, n}, ..., "all": {...}} (95% percentile bootstrap over cases)."""
    by_n: dict[int, list[float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            by_n.setdefault(int(r["n_refs"]), []).append(float(r[metric]))
    out: dict = {}
    for n, vals in sorted(by_n.items()):
        a = np.asarray(vals)
        out[n] = {"mean": float(a.mean()), "ci95": _ci(a), "n": int(a.size)}
    allv = np.asarray([v for vals in by_n.values() for v in vals])
    if allv.size:
        out["all"] = {"mean": float(allv.mean()), "ci95": _ci(allv), "n": int(allv.size)}
    return out


def paired_difference(before: Sequence[dict], after: Sequence[dict], metric: str) -> dict:
    """after − before per case (matched by index), summarised like :func:`summarise`: the interval
    is of the mean paired difference, so it is above 0 when ``after`` is reliably higher."""
    b = {r["index"]: r for r in before}
    rows = [{"n_refs": r["n_refs"], metric: r[metric] - b[r["index"]][metric]} for r in after
            if r["index"] in b and r.get(metric) is not None and b[r["index"]].get(metric) is not None]
    return summarise(rows, metric)


def flat_scores(rows: Sequence[dict], metrics: Sequence[str] = METRICS,
                name: Callable[[str, str], str] = lambda m, n: f"eval/{m}/{n}") -> dict[str, float]:
    """{"eval/<metric>/<n_refs>" (and ".../all"): mean} for history records and Prometheus."""
    out = {}
    for m in metrics:
        for n, cell in summarise(rows, m).items():
            out[name(m, str(n))] = round(cell["mean"], 6)
    return out
