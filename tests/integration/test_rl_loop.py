"""The distributed RL loop through the real path: Redis streams, Ray actors, Serve, weight broadcast.

Tiny Flux2Klein policy (full fine-tune, as RECIPES.md §7 found learns fastest) and a learnable
reward (closeness of the mean colour to a fixed RGB). One module-scoped Ray; each test has its
own Redis namespace and checkpoint folder.
"""
from __future__ import annotations

import statistics
import uuid

import pytest

from common.config import load_config
from services.launch import run_rl, wait_for
from services.learner.rl_recipe import RLRecipe
from services.learner.tasks import TaskSource, synthetic_cases

pytestmark = pytest.mark.integration



def tiny_rl_cfg(redis_server, tmp_path, **rl):
    ns = f"rl{uuid.uuid4().hex[:8]}"
    over = {
        "redis": {"url": redis_server.url, "namespace": ns, "claim_idle_ms": 1500, "embedded": False},
        "policy": {"finetune": "full", "height": 64, "width": 64, "reference_size": 64, "num_inference_steps": 6,
                   "sde": {"dynamics": "flow-sde", "noise_level": 1.0, "train_steps": [0, 1], "num_train_steps": 1}},
        "rl": {"group_size": 8, "groups_per_step": 4, "lr": 2e-3, "clip_range": 1e-4, "max_staleness": 1,
               "publish_every": 1, "checkpoint_every": 5, "checkpoint_dir": str(tmp_path / "ckpt"),
               "kl": {"beta": 0.0}, "ema": {"enabled": False}, "advantage": "grpo",
               "dar": {"enabled": False}, "drs": {"enabled": False}, **rl},
        "rewards": {"components": [{"name": "colour", "scorer": "colour", "weight": 1.0, "against": "none"}],
                    "timeout_s": 30, "retries": 2},
    }
    return load_config("cpu-tiny", over)


def source(n=4):
    return TaskSource(synthetic_cases(n, seed=3, size=64, ref_size=64, max_refs=2), seed=0)


def test_reward_rises_versions_flow_and_groups_count_once(ray_cluster, redis_server, tmp_path):
    cfg = tiny_rl_cfg(redis_server, tmp_path, total_steps=40)
    recipe, state, statuses = run_rl(cfg, cfg.redis.url, source(), generators=1)
    rewards = [h["reward/colour"] for h in state.history]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    spread = statistics.mean(h["reward/colour_std"] for h in state.history[:5])
    assert last - first > 2 * spread, f"reward did not rise: first {first:.4f} last {last:.4f} (within-step std {spread:.4f})"
    # weights flowed: the generator served recent versions, and no group was stale
    assert statuses[0]["version"] >= state.version - 1 > 30
    assert max(h["version_lag_mean"] for h in state.history) <= cfg.rl.max_staleness
    audit = recipe.audit()
    assert audit["consumed"] == 40 * cfg.rl.groups_per_step
    assert audit["duplicate"] == 0 and audit["dead_lettered"] == 0 and audit["dropped_stale"] == 0
    assert audit["admitted"] == audit["consumed"] + audit["in_flight"]


def test_killed_generator_task_is_redone_once_and_learner_resumes(ray_cluster, redis_server, tmp_path):
    import ray
    from services.generator.actor import start_generators
    from services.launch import start_reward_app
    cfg = tiny_rl_cfg(redis_server, tmp_path, total_steps=1000)
    start_reward_app(cfg)
    recipe = RLRecipe(cfg, cfg.redis.url, source()).setup()
    gens = start_generators(cfg, cfg.redis.url, n=2)
    try:
        recipe.train(steps=2)
        victim, _ = gens[0]
        assert wait_for(lambda: recipe.tasks.pending() > 0, 30)
        ray.kill(victim, no_restart=True)  # mid-group: its task stays pending in the stream
        recipe.train(steps=4)  # the survivor reclaims the orphaned task after claim_idle_ms
        assert recipe.state.step == 6
        recipe.save_checkpoint()
        audit = recipe.audit()
        assert audit["consumed"] == 6 * cfg.rl.groups_per_step
        assert audit["dead_lettered"] == 0
        assert audit["admitted"] == audit["consumed"] + audit["dropped_stale"] + audit["in_flight"]
        # every admitted task is either settled or still in the task/group streams: nothing lost
        assert audit["in_flight"] == recipe.tasks.depth() + recipe.groups.depth() - audit["duplicate"] * 0
        step, version = recipe.state.step, recipe.state.version
        # stop and restart the learner: same step and version, then it trains on
        again = RLRecipe(cfg, cfg.redis.url, source()).setup()
        assert (again.state.step, again.state.version) == (step, version)
        assert again.weights.latest().version == version
        again.train(steps=2)
        assert again.state.step == step + 2
        assert again.audit()["consumed"] == (step + 2) * cfg.rl.groups_per_step
    finally:
        for a, _ in gens:
            try:
                a.stop.remote()
                ray.kill(a)
            except Exception:
                pass


def test_weight_checksum_failure_keeps_previous_version(redis_server, tmp_path):
    from common.transport import Keys, connect
    from services.generator.worker import GeneratorWorker
    cfg = tiny_rl_cfg(redis_server, tmp_path)
    recipe = RLRecipe(cfg, cfg.redis.url, source()).setup()  # publishes version 0
    worker = GeneratorWorker("g-test", cfg, cfg.redis.url, score_group=lambda task, pngs: {})
    assert worker.sync_weights(0) == 0
    v1 = recipe.publish()
    r = connect(cfg.redis.url)
    r.set(Keys(cfg.redis.namespace).weights(v1), b"tampered weights")
    assert worker.sync_weights(0, timeout_s=0) == 0  # refused: keeps serving version 0
    assert v1 in worker.refused_versions
    v2 = recipe.publish()
    assert worker.sync_weights(v2, timeout_s=5) == v2  # the next good version loads
    r.close()


def test_a_fresh_run_refuses_a_namespace_holding_another_runs_ledger(redis_server, tmp_path):
    cfg = tiny_rl_cfg(redis_server, tmp_path / "a")
    first = RLRecipe(cfg, cfg.redis.url, source()).setup()
    other = cfg.model_copy(deep=True)
    other.rl.checkpoint_dir = str(tmp_path / "b" / "ckpt")
    with pytest.raises(RuntimeError, match=f"holds the ledger of run {first.state.run_id}"):
        RLRecipe(other, cfg.redis.url, source()).setup()
    again = RLRecipe(cfg, cfg.redis.url, source()).setup()  # its own folder: the same run continues
    assert again.state.run_id == first.state.run_id
