"""policy.init_weights: a full fine-tune's SFT weights are the RL starting point and the KL reference."""
import pytest
import torch

from common.config import PolicyConfig
from common.policy import PolicyLoadError, build_policy


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_init_weights_load_and_become_the_kl_reference(tmp_path, finetune):
    cfg = PolicyConfig(finetune=finetune)
    trained = build_policy(cfg)
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "trainable.safetensors"
    path.write_bytes(trained.trainable_state())
    rl = build_policy(cfg.model_copy(update={"init_weights": str(path)}))
    assert rl.trainable_state() == trained.trainable_state()
    cond, _, _ = rl.encode("a red circle at top left", None)
    x = torch.randn(2, cond.meta["seq_len"], cond.meta["channels"])
    v = rl.velocity(cond, x, 0.7)
    assert torch.allclose(rl.reference_velocity(cond, x, 0.7, mode="sft"), v)
    assert torch.allclose(trained.velocity(cond, x, 0.7), v)


def test_missing_init_weights_is_a_clear_error(tmp_path):
    with pytest.raises(PolicyLoadError, match="init_weights"):
        build_policy(PolicyConfig(finetune="full", init_weights=str(tmp_path / "nope.safetensors")))
