"""dyref bench sub-app: stats of the shipped metadata; clear errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from common.bench.cli import bench_app

SKELETON = str(Path(__file__).resolve().parents[3] / "data" / "omniref" / "metadata" / "data_our_multibanana_skeleton.json")


def test_stats_command_on_shipped_file():
    r = CliRunner().invoke(bench_app, ["stats", SKELETON])
    assert r.exit_code == 0
    st = json.loads(r.stdout)
    assert st["n_cases"] == 396 and st["by_n_refs"] == {"2": 26, "3": 50, "4": 90, "5": 100, "6": 95, "7": 35}
    assert len(st["by_category"]) == 10


def test_errors_are_clear(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps([{"prompt": "p", "index": 0, "edit_image": ["/etc/x/3/1/style/reference.png"]}]))
    r = CliRunner().invoke(bench_app, ["stats", str(bad)])
    assert r.exit_code == 2 and "is not <category>/<n_refs>/<case>" in " ".join(r.output.split())
    r = CliRunner().invoke(bench_app, ["run", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--metadata and --image-root" in " ".join(r.output.split())
    r = CliRunner().invoke(bench_app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "scores.jsonl" in " ".join(r.output.split())
