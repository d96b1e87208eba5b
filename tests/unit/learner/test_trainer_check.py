"""The trainer's device check (services/learner/trainer_check.py) in its CPU form: FSDP2 in a one-rank
gloo group on the tiny policy, so the GPU run of scripts/gpu_check.sh is validated without a GPU."""
from __future__ import annotations

import json

import pytest

from services.learner import trainer_check


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_the_trainer_check_reports_each_part_of_a_wrapped_trainer(strategy, tmp_path):
    out = tmp_path / "r.json"
    # the fsdp2 run also syncs the gathered weights on both paths (a local Ray starts for it)
    assert trainer_check.main(["--profile", "cpu-tiny", "--strategy", strategy, "--group-size", "4",
                               "--steps", "4", "--refs", "1", "--out", str(out),
                               "--sync-repeats", "1" if strategy == "fsdp2" else "0"]) == 0
    rep = json.loads(out.read_text())
    t = rep["trainer"]
    assert rep["schema"] == "dyref.trainer_check/1" and rep["card"] == "cpu" and t["strategy"] == strategy
    assert len(t["step_s"]) == 3 and all(s > 0 for s in t["step_s"])
    for k in ("wrap_s", "save_s", "load_s", "gather_state_s", "probe_s", "checkpoint_mb", "state_mb"):
        assert t[k] > 0, k
    assert t["trainable_params"] > 0 and t["loss"] == t["loss"]  # a number, not NaN
    if strategy == "fsdp2":
        assert [w["path"] for w in t["weight_sync"]] == ["redis", "direct (gloo)", "direct (object store)"]
        assert all(abs(w["mb"] - t["state_mb"]) < 1e-9 and w["total_s"] > 0 for w in t["weight_sync"])
    else:
        assert "weight_sync" not in t
    import torch.distributed as dist
    assert not dist.is_initialized()  # the check leaves no process group behind
