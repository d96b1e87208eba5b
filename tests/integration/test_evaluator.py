"""The evaluator service: follows published weight versions (real Redis), scores a held-out split
every N versions, exports dyref_eval_score{metric, n_refs} on /metrics and keeps a record per
evaluation; as a Ray actor beside a real RL run it evaluates while the learner trains."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest
import torch

from common import metrics as M
from common.config import load_config
from common.synthetic import make_split
from common.transport import Keys, WeightStore, connect
from services.evaluator.worker import EvaluatorWorker, read_eval_history

pytestmark = pytest.mark.integration


def cfg_for(redis_server, **rl):
    ns = f"ev{uuid.uuid4().hex[:8]}"
    return load_config("cpu-tiny", {"redis": {"url": redis_server.url, "namespace": ns, "embedded": False},
                                    "policy": {"finetune": "full"}, "rl": rl})


def test_evaluates_every_n_versions_exports_and_records(redis_server):
    cfg = cfg_for(redis_server)
    cases = make_split("ev", 4, 0, size=64, ref_size=64, max_refs=2, categories=["subject", "subject_bg"])
    worker = EvaluatorWorker(cfg, cfg.redis.url, cases, every=2, steps=2)
    store = WeightStore(connect(cfg.redis.url), Keys(cfg.redis.namespace))
    assert worker.evaluate_latest() is None  # nothing published yet
    policy = worker.policy
    store.publish(policy.trainable_state(), 0, kind="full")
    first = worker.evaluate_latest()
    assert first["version"] == 0 and {"eval/placement/all", "eval/reference_similarity/all",
                                      "eval/background_error/all"} <= set(first)
    # version 1 is not due (every 2), version 2 is, with other weights: other scores
    store.publish(policy.trainable_state(), 1, kind="full")
    assert worker.evaluate_latest() is None
    with torch.no_grad():
        moved = {n: p + 0.5 * torch.randn_like(p) for n, p in policy.named_trainable_parameters()}
    from common.codec import state_to_bytes
    store.publish(state_to_bytes(moved), 2, kind="full")
    second = worker.evaluate_latest()
    assert second["version"] == 2 and second["eval/background_error/all"] != first["eval/background_error/all"]
    assert [r["version"] for r in read_eval_history(worker.r, worker.keys)] == [0, 2]
    # the gauges carry the newest evaluation, by metric and reference count
    port = M.serve_metrics(0)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith('dyref_eval_score{metric="background_error",n_refs="all"}'))
    assert float(line.split()[-1]) == pytest.approx(second["eval/background_error/all"], abs=1e-6)
    assert "dyref_eval_policy_version 2.0" in text
    # a due version that does not load is refused once (counted), never evaluated nor fetched again;
    # the next due version is evaluated
    store.publish(state_to_bytes({n: torch.zeros(3) for n in moved}), 4, kind="full")
    assert worker.evaluate_latest() is None and worker.follower.failures["shape"] == 1
    assert worker.evaluate_latest() is None and worker.follower.failures["shape"] == 1
    assert 'dyref_weight_load_failures_total{consumer="evaluator",reason="shape"} 1.0' in \
        httpx.get(f"http://127.0.0.1:{port}/metrics").text
    store.publish(policy.trainable_state(), 5, kind="full")
    assert worker.evaluate_latest()["version"] == 5 and worker.last == 5


def test_evaluator_actor_follows_a_real_rl_run(ray_cluster, redis_server, tmp_path):
    from dyref.launch import run_rl
    from services.learner.tasks import TaskSource, synthetic_cases
    cfg = cfg_for(redis_server, total_steps=6, eval_every=2, checkpoint_dir=str(tmp_path / "rl"),
                  group_size=4, groups_per_step=2)
    cfg.metrics_port = 0
    cases = make_split("ev", 4, 1, size=64, ref_size=64, max_refs=2, categories=["subject", "subject_bg"])
    source = TaskSource(synthetic_cases(4, 3, size=64, ref_size=64, max_refs=2), seed=0)
    recipe, state, statuses = run_rl(cfg, cfg.redis.url, source, generators=1, eval_cases=cases)
    history = read_eval_history(recipe.r, recipe.keys)
    assert state.step == 6 and len(history) >= 2, history
    versions = [h["version"] for h in history]
    assert versions == sorted(versions) and all(b - a >= 2 for a, b in zip(versions, versions[1:]))
    assert any(s.get("evaluations") for s in statuses), statuses
    assert json.dumps(history)  # records are plain JSON for the report
