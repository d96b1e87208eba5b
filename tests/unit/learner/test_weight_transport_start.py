"""rl.learner.weight_transport=direct needs the learner in a Ray cluster: without one it fails at
start-up naming the field, before anything is admitted."""
from __future__ import annotations

import uuid

import pytest
import ray

from common.config import load_config
from services.learner.rl_recipe import RLRecipe
from services.learner.tasks import TaskSource, synthetic_cases


def test_the_direct_weight_path_without_ray_fails_at_start_up_naming_the_field(redis_server, tmp_path):
    if ray.is_initialized():
        pytest.skip("this process is in a Ray cluster already")
    ns = f"wt{uuid.uuid4().hex[:8]}"
    cfg = load_config("cpu-tiny", {"redis": {"url": redis_server.url, "namespace": ns, "embedded": False},
                                   "rl": {"checkpoint_dir": str(tmp_path / "ckpt"),
                                          "learner": {"weight_transport": "direct"}}})
    source = TaskSource(synthetic_cases(2, seed=0, size=32, ref_size=32, max_refs=1), seed=0)
    with pytest.raises(RuntimeError, match=r"rl\.learner\.weight_transport=direct: the learner must run in the Ray cluster"):
        RLRecipe(cfg, cfg.redis.url, source).setup()
    from common.transport import connect
    assert not list(connect(redis_server.url).scan_iter(match=f"{ns}:*"))  # nothing admitted or published
    assert not ray.is_initialized()  # and no Ray was started behind the user's back
