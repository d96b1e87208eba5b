"""End to end on CPU: synthetic benchmark -> tiny policy -> every offline scorer -> report; a second
run resumes without regenerating or rescoring."""
from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from common.bench.cli import bench_app, run_bench, settings_from_policy
from common.bench.synthetic import build_synthetic_bench
from common.config import load_config


def test_synthetic_bench_end_to_end(tmp_path):
    torch.set_num_threads(1)
    from common.policy import build_policy
    cfg = load_config("cpu-tiny")
    meta = build_synthetic_bench(tmp_path / "data", n_cases=12, seed=0, size=64)

    calls = []

    class CountingPolicy:  # the real tiny policy; counts generate() calls to prove the resume
        def __init__(self, inner):
            self.inner = inner

        def generate(self, *a, **k):
            calls.append(1)
            return self.inner.generate(*a, **k)

    from common.bench.runner import PolicyGenerator
    gen = PolicyGenerator(CountingPolicy(build_policy(cfg.policy)), label="tiny")
    settings = settings_from_policy(cfg.policy, cfg.bench.seed)
    kw = dict(metadata=meta, image_root=tmp_path / "data" / "images", out=tmp_path / "runs", run_name="tiny", progress=False)
    r1 = run_bench(cfg.bench, settings, gen, **kw)
    assert r1["generated"] == 12 and r1["failed"] == {} and len(calls) == 12

    rep = json.loads((tmp_path / "runs" / "tiny" / "report" / "report.json").read_text())["summary"]
    assert rep["n_cases"] == 12
    assert set(rep["cases_by_n_refs"]) == {"2", "3", "4", "5", "6", "7"}
    for dim in ("clip_i", "dino", "placement"):
        assert rep["overall"][dim]["n"] == 12
    assert {"lighting", "style", "background_clip"} <= set(rep["dims"])
    assert "pose" not in rep["dims"] and "pose: not evaluated (no pose model configured)" in rep["notes"]
    assert any("no detector" in n for n in rep["notes"])
    assert "judge: not evaluated (no judge configured)" in rep["notes"]
    md = (tmp_path / "runs" / "tiny" / "report" / "report.md").read_text()
    assert "### By number of references" in md and "### By category" in md
    assert all((tmp_path / "runs" / "tiny" / "report" / "plots" / f).stat().st_size > 1000
               for f in ("by_n_refs.png", "by_category.png"))

    imgs = sorted((tmp_path / "runs" / "tiny" / "images").glob("*.png"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in imgs}
    r2 = run_bench(cfg.bench, settings, gen, **kw)
    assert r2["generated"] == 0 and r2["skipped"] == 12 and len(calls) == 12
    assert r2["reused_scores"] == 12 and r2["scored"] == 0
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in imgs}

    # the CLI over the same run: stats of the synthetic metadata and a self-comparison report
    runner = CliRunner()
    st = runner.invoke(bench_app, ["stats", str(meta)])
    assert st.exit_code == 0 and json.loads(st.stdout)["n_cases"] == 12
    res = runner.invoke(bench_app, ["report", str(tmp_path / "runs" / "tiny"), "--compare", str(tmp_path / "runs" / "tiny")])
    assert res.exit_code == 0 and "+0.000" in res.stdout
