"""Trainer workers on Ray Train (services/learner/workers.py): N gloo workers take the one-worker step.

The reference is the plain in-process Trainer on the same batch: two DDP or two FSDP2 workers must
give the same trainable parameters (fp32, within 1e-6; reduction order is the only difference),
and a checkpoint the two wrote must resume on one worker as if one had trained all along.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load

from common.config import load_config
from common.schemas import SamplingParams
from services.learner.trainer import Trainer, TrainGroup
from services.learner.workers import PlacementError, TrainerGone, TrainerGroup

pytestmark = pytest.mark.integration


def _cfg(strategy: str, finetune: str, **learner):
    # KL, EMA, two minibatches and two train steps per rollout: every part of a step, and a batch of
    # 3 groups that the 2 workers split unevenly (one pads at weight 0)
    return load_config("cpu-tiny", {
        "policy": {"finetune": finetune, "sde": {"train_steps": [0, 1, 2], "num_train_steps": 2}},
        "rl": {"kl": {"beta": 0.04}, "minibatches": 2, "groups_per_step": 3, "lr": 1e-3,
               "ema": {"enabled": True, "update_interval": 1},
               "learner": {"workers": 2, "strategy": strategy, "cpus_per_worker": 1, **learner}}})


def _batch(cfg, trainer: Trainer) -> list[TrainGroup]:
    params = SamplingParams.from_config(cfg.policy)
    return [TrainGroup(trainer.policy.sample_group(f"a red square {k}", [], 4, params, seed=k),
                       torch.randn(4, generator=torch.Generator().manual_seed(k)), torch.tensor(1.0 + 0.5 * k))
            for k in range(3)]


def _max_diff(a: bytes, b: bytes) -> float:
    x, y = load(a), load(b)
    assert set(x) == set(y)
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.parametrize("strategy, finetune", [("ddp", "lora"), ("fsdp2", "full")])
def test_two_workers_take_the_one_worker_step_and_their_checkpoint_resumes_on_one(strategy, finetune, ray_cluster,
                                                                                  tmp_path):
    cfg = _cfg(strategy, finetune)
    one = Trainer(cfg.policy, cfg.rl)
    start = one.trainable_state()
    batch = _batch(cfg, one)
    group = TrainerGroup(cfg.policy, cfg.rl, storage=tmp_path / "ray-train")
    try:
        assert len(set(group.worker_pids())) == 2
        stats2 = group.update(batch, step=0)
        two = group.trainable_state()
        group.save(tmp_path / "ckpt")
    finally:
        group.close()
    stats1 = one.update(batch, step=0)
    assert _max_diff(start, one.trainable_state()) > 1e-5  # the step moved the weights
    assert _max_diff(two, one.trainable_state()) <= 1e-6
    for k in ("losses/loss", "losses/kl", "losses/grad_norm", "losses/ratio_mean"):
        assert stats2[k] == pytest.approx(stats1[k], rel=1e-5, abs=1e-9), k

    # the 2-worker checkpoint (weights, AdamW moments, EMA) on 1 worker, then step 1 on both paths
    resumed = Trainer(cfg.policy, cfg.rl)
    resumed.load(tmp_path / "ckpt")
    resumed.update(batch, step=1)
    one.update(batch, step=1)
    assert _max_diff(resumed.trainable_state(), one.trainable_state()) <= 1e-6
    assert max(float((resumed.ema.shadow[n] - one.ema.shadow[n]).abs().max()) for n in one.ema.shadow) <= 1e-6


def test_more_workers_than_the_cluster_can_place_fail_at_start_up(ray_cluster, tmp_path):
    cfg = load_config("cpu-tiny", {"rl": {"groups_per_step": 4, "learner": {"workers": 4, "cpus_per_worker": 1}}})
    with pytest.raises(PlacementError, match=r"rl\.learner\.workers=4 x rl\.learner\.cpus_per_worker=1 needs 4 CPU, "
                                             r"but the Ray cluster has 3"):
        TrainerGroup(cfg.policy, cfg.rl, storage=tmp_path)


def test_workers_that_cannot_build_the_trainer_fail_start_up_with_their_reason(ray_cluster, tmp_path):
    cfg = _cfg("ddp", "lora", max_failures=0, start_timeout_s=120)
    cfg.policy.init_weights = str(tmp_path / "missing.safetensors")
    with pytest.raises(TrainerGone, match=r"trainer worker \d could not build its trainer: .*missing\.safetensors"):
        TrainerGroup(cfg.policy, cfg.rl, storage=tmp_path)
