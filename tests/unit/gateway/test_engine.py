"""GeneratorCore: verified weight switching between batches, one pipeline call at a time, per-request errors."""
from __future__ import annotations

import threading
import time

import numpy as np
import torch

from common.codec import state_from_bytes, state_to_bytes
from common.transport import WeightStore
from services.gateway.prepare import GenJob


def _job(**kw) -> GenJob:
    base = dict(prompt="a red square", refs=[("subject", np.full((32, 32, 3), 200, np.uint8), None)], n=1, width=32,
                height=32, seed=1, steps=2, guidance=1.0)
    return GenJob(**(base | kw))


def test_results_keep_request_order_and_a_bad_request_fails_alone(core):
    jobs = [_job(width=48, seed=1), _job(width=40), _job(width=32, n=2, output_format="jpeg")]
    res = core.run_batch(jobs)
    assert res[0].error is None and res[0].width == 48 and len(res[0].images) == 1
    assert res[1].error[0] == 400 and "multiple" in res[1].error[2]
    assert res[2].error is None and len(res[2].images) == 2 and res[2].images[0][:2] == b"\xff\xd8"  # JPEG
    assert res[0].timings["batch_size"] == 3.0


def test_never_two_pipeline_calls_at_once(core, monkeypatch):
    real, active, peak = core.policy.generate, [0], [0]

    def spy(*a, **kw):  # delegates to the real policy; only counts overlap
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.01)
            return real(*a, **kw)
        finally:
            active[0] -= 1
    monkeypatch.setattr(core.policy, "generate", spy)
    threads = [threading.Thread(target=core.run_batch, args=([_job(seed=i), _job(seed=i + 10)],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


def test_switches_to_verified_versions_only(core, r, gw_keys):
    store = WeightStore(r, gw_keys, keep=3)
    base = core.run_batch([_job()])[0]
    sd = state_from_bytes(core.policy.trainable_state())
    g = torch.Generator().manual_seed(1)
    moved = {k: v + 0.5 * torch.randn(v.shape, generator=g) if "lora_B" in k else v for k, v in sd.items()}
    store.publish(state_to_bytes(moved), version=5)
    v5 = core.run_batch([_job()])[0]
    assert v5.policy_version == 5 and v5.images != base.images

    failures = dict(core.failures)
    wv = store.publish(state_to_bytes(sd), version=6)
    r.set(wv.key, b"x" + r.get(wv.key)[1:])                      # corrupt in Redis: checksum fails
    assert core.run_batch([_job()])[0].policy_version == 5
    store.publish(b"not safetensors at all", version=7)           # verifies, but is not a state
    assert core.run_batch([_job()])[0].policy_version == 5
    store.publish(state_to_bytes({"nope": torch.zeros(2)}), version=8)  # wrong keys
    same = core.run_batch([_job()])[0]
    assert same.policy_version == 5 and same.images == v5.images   # nothing half-loaded
    assert core.failures["checksum"] == failures.get("checksum", 0) + 1
    assert core.failures["invalid"] == failures.get("invalid", 0) + 1
    assert core.failures["shape"] == failures.get("shape", 0) + 1
    assert {6, 7, 8} <= core.refused

    store.publish(state_to_bytes(sd), version=9)                   # back to the original weights
    back = core.run_batch([_job()])[0]
    assert back.policy_version == 9 and back.images == base.images


def test_not_ready_answers_503():
    from common.config import PolicyConfig
    from services.gateway.engine import GeneratorCore
    c = GeneratorCore(PolicyConfig(source="pretrained", path="/nonexistent/dyref-model"), None)
    c.load()
    res = c.run_batch([_job()])[0]
    assert not c.ready and res.error[0] == 503 and res.error[1] == "model_not_ready"
    assert c.stats()["load_error"]
