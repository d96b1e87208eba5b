"""The trainer (services/learner/trainer.py): whole groups with their signals in, optimizer steps out."""
from __future__ import annotations

import copy

import torch

from common.config import load_config
from common.schemas import SamplingParams
from services.learner.trainer import Trainer, TrainGroup


def _setup():
    cfg = load_config("cpu-tiny", {"rl": {"kl": {"beta": 0.04}, "minibatches": 2, "ema": {"enabled": True}}})
    trainer = Trainer(cfg.policy, cfg.rl)
    params = SamplingParams.from_config(cfg.policy)
    groups = []
    for k, adv in enumerate(([1.0, -1.0, 0.5, -0.5], [0.2, 0.4, -0.2, -0.4])):
        ro = trainer.policy.sample_group(f"a red square {k}", [], 4, params, seed=k)
        groups.append(TrainGroup(ro, torch.tensor(adv), torch.tensor(1.0 + k)))
    return cfg, trainer, groups


def test_an_update_moves_the_weights_and_a_restored_trainer_continues_exactly():
    cfg, a, groups = _setup()
    before = a.trainable_state()
    stats = a.update(groups, step=0)
    assert a.trainable_state() != before
    assert {"losses/loss", "losses/policy_loss", "losses/kl", "losses/grad_norm"} <= set(stats)
    saved = copy.deepcopy(a.checkpoint_state())   # live tensors: what a checkpoint file would hold
    a.update(groups, step=1)
    b = Trainer(cfg.policy, cfg.rl)
    b.restore(*saved)   # weights, AdamW moments and the EMA shadow of step 0
    b.update(groups, step=1)
    assert b.trainable_state() == a.trainable_state()
    assert all(torch.equal(x, y) for x, y in zip(a.ema.state_dict()["shadow"].values(),
                                                 b.ema.state_dict()["shadow"].values()))


def test_zero_advantages_without_kl_leave_the_weights_alone():
    # PPO's policy term is −A·ratio: with A = 0 and β = 0 there is no gradient, so AdamW (no weight
    # decay) takes a zero step
    cfg = load_config("cpu-tiny", {"rl": {"kl": {"beta": 0.0}, "weight_decay": 0.0}})
    trainer = Trainer(cfg.policy, cfg.rl)
    ro = trainer.policy.sample_group("a red square", [], 4, SamplingParams.from_config(cfg.policy), seed=3)
    before = trainer.trainable_state()
    trainer.update([TrainGroup(ro, torch.zeros(4), torch.tensor(1.0))], step=0)
    assert trainer.trainable_state() == before
