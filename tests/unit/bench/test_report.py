"""Report: per-count / per-category stats with bootstrap CIs, missing never averaged, comparison deltas."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.bench.report import bootstrap_ci, compare, summarize, write_report


def _recs(offset=0.0):
    out = []
    for i in range(12):
        s = {"clip_i": 0.5 + 0.01 * i + offset, "judge.text_adherence": None if i == 0 else 6.0,
             "judge.aesthetic_quality": 4.0}
        if i % 2:
            s["style"] = 0.3
        out.append({"index": i * 3, "category": ["subject", "subject_style"][i % 2], "n_refs": 2 + i % 3, "scores": s})
    return out


def test_summary_groups_counts_and_missing():
    s = summarize(_recs(), ["pose: not evaluated"])
    assert s["cases_by_n_refs"] == {"2": 4, "3": 4, "4": 4}
    assert s["cases_by_category"] == {"subject": 6, "subject_style": 6}
    ta = s["overall"]["judge.text_adherence"]
    assert ta["mean"] == 6.0 and ta["n"] == 11 and ta["missing"] == 1      # the null is not a 0
    assert s["overall"]["judge.average"]["mean"] == pytest.approx(5.0)
    assert s["overall"]["style"]["n"] == 6 and "style" not in s["by_category"]["subject"]
    st = s["by_n_refs"]["2"]["clip_i"]
    assert st["n"] == 4 and st["ci_low"] <= st["mean"] <= st["ci_high"]


def test_bootstrap_ci_properties():
    assert bootstrap_ci(np.array([1.0])) is None
    assert bootstrap_ci(np.full(10, 3.0)) == (3.0, 3.0)
    x = np.random.default_rng(0).normal(5, 1, 400)
    lo, hi = bootstrap_ci(x)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(x) == (lo, hi)                                    # seeded: reproducible


def test_compare_is_paired_by_index(tmp_path):
    a, b = _recs(), _recs(offset=0.1)
    b = b[1:]                                                             # index 0 only in A
    c = compare(a, b, "sft", "rl")
    assert c["n_paired"] == 11 and c["only_in_a"] == 1
    assert c["overall"]["clip_i"]["delta"] == pytest.approx(0.1)
    assert c["by_n_refs"]["3"]["clip_i"]["n"] == 4
    for name, recs in (("sft", a), ("rl", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = write_report(tmp_path / "rl", compare_dir=tmp_path / "sft")
    md = rep["markdown"].read_text()
    assert "# rl vs sft" in md and "+0.100" in md and "### By number of references" in md
    assert {p.name for p in rep["plots"]} == {"by_n_refs.png", "by_category.png", "compare_by_n_refs.png"}
    assert all(p.stat().st_size > 1000 for p in rep["plots"])
    assert json.loads(rep["json"].read_text())["compare"]["n_paired"] == 11
