"""The demo's verdicts in words, from paired differences given by hand (docs/learning.md §5).

The RL-beats-SFT verdict needs: placement and per-reference similarity with a paired interval
above 0 overall and for at least two reference counts ≥ 2, and a background-error difference whose
upper bound is at most +0.01.
"""
from __future__ import annotations

from dyref.demo_report import ablation_verdicts, gain_verdict


def cell(lo, hi, n=64):
    return {"mean": (lo + hi) / 2, "ci95": [lo, hi], "n": n}


def diff(place2=(0.05, 0.20), place3=(0.01, 0.09), bg_hi=0.008):
    good = {1: cell(-0.05, 0.05), 2: cell(*place2), 3: cell(*place3), "all": cell(0.01, 0.08, 192)}
    return {"placement": good, "reference_similarity": good,
            "background_error": {"all": cell(bg_hi - 0.01, bg_hi, 192)}}


def test_the_gain_holds_with_two_counts_above_zero_and_the_background_kept():
    ok, lines = gain_verdict(diff())
    assert ok
    assert "2 refs, 3 refs" in lines[0] and "RL keeps the background" in lines[-1]


def test_one_count_above_zero_is_not_enough():
    ok, lines = gain_verdict(diff(place3=(-0.01, 0.09)))
    assert not ok and "not a clear gain" in lines[0]


def test_a_background_upper_bound_past_one_hundredth_fails_the_verdict():
    ok, lines = gain_verdict(diff(bg_hi=0.011))
    assert not ok and "damages the background" in lines[-1]


def test_ablation_verdicts_say_where_a_component_helps_hurts_or_does_nothing():
    lines = ablation_verdicts({
        "gdpo+drs": {"placement": {2: cell(0.01, 0.05), 3: cell(-0.03, -0.01), "all": cell(-0.01, 0.02)},
                     "background_error": {"all": cell(-0.02, -0.01)}},
        "shuffled": {"placement": {2: cell(-0.02, 0.03), "all": cell(-0.01, 0.01)}},
    })
    assert lines[0].startswith("- gdpo+drs: placement **better** (2 refs) and **worse** (3 refs) than GDPO")
    assert lines[1].startswith("- gdpo+drs: background error **better** (overall) than GDPO")  # lower is better
    assert lines[2].startswith("- shuffled: placement **not clearly different** from GDPO anywhere")
