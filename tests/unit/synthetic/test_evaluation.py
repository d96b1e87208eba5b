"""Held-out evaluation: rows per case, summaries by reference count, paired differences."""
import numpy as np
import pytest

from common.synthetic import make_split
from common.synthetic.evaluation import evaluate_policy, flat_scores, paired_difference, summarise


def rows(values, counts):
    return [{"index": i, "n_refs": n, "m": v} for i, (v, n) in enumerate(zip(values, counts))]


def test_summarise_means_by_count_and_overall():
    s = summarise(rows([1.0, 0.0, 0.5, 0.5, 1.0], [1, 1, 2, 2, 2]), "m")
    assert s[1]["mean"] == 0.5 and s[1]["n"] == 2
    assert s[2]["mean"] == pytest.approx(2.0 / 3.0) and s[2]["n"] == 3
    assert s["all"]["mean"] == pytest.approx(3.0 / 5.0)
    lo, hi = s["all"]["ci95"]
    assert 0.0 <= lo <= 0.6 <= hi <= 1.0


def test_paired_difference_is_per_case():
    before = rows([0.2, 0.4, 0.6, 0.8], [2, 2, 3, 3])
    after = rows([0.3, 0.5, 0.7, 0.9], [2, 2, 3, 3])
    d = paired_difference(before, after, "m")
    # every case rose by exactly 0.1: the mean difference is 0.1 and its interval is the point 0.1
    assert d["all"]["mean"] == pytest.approx(0.1)
    assert d["all"]["ci95"] == [pytest.approx(0.1), pytest.approx(0.1)]
    # unpaired, the two groups' intervals would overlap widely; paired they do not
    assert summarise(after, "m")["all"]["ci95"][0] < summarise(before, "m")["all"]["ci95"][1]


def test_paired_difference_matches_cases_by_index_not_order():
    before = rows([0.0, 1.0], [1, 1])
    after = list(reversed(rows([0.5, 1.0], [1, 1])))
    assert paired_difference(before, after, "m")["all"]["mean"] == pytest.approx((0.5 + 0.0) / 2)


class _Oracle:
    """A 'policy' that returns each case's ground truth: every metric at its best."""

    def __init__(self, cases):
        self.by_prompt = {c.prompt: c for c in cases}

    def generate(self, prompt, refs, seed, num_inference_steps, output_type):
        return np.asarray(self.by_prompt[prompt].target)[None]


def test_ground_truth_scores_perfectly():
    cases = make_split("ev", 12, 0, size=32, ref_size=16, max_refs=4, categories=["subject", "subject_bg"])
    out = evaluate_policy(_Oracle(cases), cases, steps=1)
    assert all(r["placement"] == 1.0 and r["background_error"] == 0.0 for r in out)
    assert all(r["reference_similarity"] >= 0.95 for r in out)
    flat = flat_scores(out, ("placement",))
    assert flat["eval/placement/all"] == 1.0 and {f"eval/placement/{n}" for n in (1, 2, 3, 4)} <= set(flat)
