"""The main job end to end on its quick plan: report, reuse on a second run, and the ablation."""
from __future__ import annotations

import json

import pytest

from common.config import load_config
from dyref.demo import run_ablation, run_demo
from dyref.demo_cli import QUICK

pytestmark = pytest.mark.integration



def test_demo_quick_reports_every_stage_then_reuses_them_and_ablates(ray_cluster, redis_server, tmp_path):
    cfg = load_config("cpu-tiny")
    out = tmp_path / "demo"
    summary = run_demo(cfg, out, QUICK, redis_server.url, say=lambda _: None)
    for stage in ("untrained", "sft", "rl"):
        cells = summary[stage]["placement"]
        assert cells["all"]["n"] == QUICK.n_test
        assert sum(v["n"] for k, v in cells.items() if k != "all") == QUICK.n_test  # by reference count
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "| rl |" in report and "RL − SFT, paired per case" in report
    for png in ("metrics_by_n_refs.png", "training_curves.png", "rl_curves.png", "samples.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    audit = summary["audit"]
    assert audit["consumed"] == QUICK.rl_steps * 4 and audit["duplicate"] == 0
    # a second run reuses the finished stages: no SFT or RL step, evaluations untouched
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("eval_*.json")}
    sft_meta = json.loads((out / "sft" / "sft.json").read_text())
    again = run_demo(cfg, out, QUICK, redis_server.url, say=lambda _: None)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("eval_*.json")} == stamps
    assert json.loads((out / "sft" / "sft.json").read_text()) == sft_meta
    assert again["audit"]["consumed"] == audit["consumed"]
    # the ablation starts every variant from the same SFT weights
    results = run_ablation(cfg, out, QUICK, redis_server.url, seeds=(0,), variants=("gdpo", "gdpo+drs+dar", "shuffled"),
                           say=lambda _: None)
    assert list(results) == ["gdpo", "gdpo+drs+dar", "shuffled", "sft"]
    assert all(len(results[v][0]) == QUICK.n_test for v in results)
    table = (out / "ablation" / "ablation.md").read_text()
    assert "| gdpo+drs+dar |" in table and "| shuffled − gdpo |" in table
