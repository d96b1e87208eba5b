"""The wrapping of services/learner/parallel.py in a one-rank gloo group: DDP and FSDP2 (with and
without activation checkpointing) must leave the one-worker step unchanged, since with one rank
the average over workers is the identity. What N ranks add (the split, the padding, the
reduction) is checked against the plain trainer in tests/integration/test_trainer_workers.py."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load

from common.config import load_config
from common.schemas import SamplingParams
from common.transport import free_port
from services.learner.trainer import Trainer, TrainGroup


def _cfg(finetune: str, **learner):
    return load_config("cpu-tiny", {"policy": {"finetune": finetune},
                                    "rl": {"kl": {"beta": 0.04}, "minibatches": 2, "lr": 1e-3,
                                           "ema": {"enabled": True, "update_interval": 1}, "learner": learner}})


@pytest.mark.parametrize("finetune, learner", [
    ("lora", {"strategy": "ddp"}),
    ("full", {"strategy": "fsdp2"}),
    ("full", {"strategy": "fsdp2", "activation_checkpointing": True}),
])
def test_a_wrapped_one_rank_trainer_takes_the_plain_step(finetune, learner):
    cfg = _cfg(finetune, **learner)
    plain = Trainer(cfg.policy, cfg.rl)
    params = SamplingParams.from_config(cfg.policy)
    groups = [TrainGroup(plain.policy.sample_group(f"a blue star {k}", [], 4, params, seed=k),
                         torch.tensor([1.0, -1.0, 0.5, -0.5]) * (k + 1), torch.tensor(1.0)) for k in range(2)]
    want = plain.update(groups, step=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        wrapped = Trainer(cfg.policy, cfg.rl)
        assert wrapped.parallel.strategy == learner["strategy"]
        got = wrapped.update(groups, step=0)
        a, b = load(wrapped.trainable_state()), load(plain.trainable_state())
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
        assert got["losses/loss"] == pytest.approx(want["losses/loss"], rel=1e-6)
        assert max(abs(x - y) for x, y in zip(wrapped.probe(), plain.probe())) <= 1e-5
    finally:
        dist.destroy_process_group()
