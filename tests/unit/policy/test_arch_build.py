"""Real-architecture configs and the meta-device random-weight builder (common/policy/arch)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from common.policy.arch import ARCHES, ArchError, build_random_pipeline, build_random_policy, load_arch, param_counts
from common.schemas import SamplingParams

# parameter counts of the public models (transformer, text encoder, VAE), as built from the shipped configs
EXPECTED = {"qwen-image-edit-2511": (20_430_401_088, 8_292_166_656, 126_892_531),
            "flux2-klein-9b": (9_078_581_248, 8_190_735_360, 84_046_115),
            "flux2-klein-4b": (3_875_544_576, 4_022_468_096, 84_046_115)}


@pytest.mark.parametrize("arch", list(ARCHES))
def test_meta_build_has_the_public_parameter_counts(arch):
    pipe = build_random_pipeline(arch, device="meta")
    c = param_counts(pipe)
    assert (c["transformer"], c["text_encoder"], c["vae"]) == EXPECTED[arch]
    assert all(p.device.type == "meta" for p in pipe.transformer.parameters())


def test_qwen_2511_config_facts():
    t = load_arch("qwen-image-edit-2511")["transformer"]
    assert (t["num_layers"], t["attention_head_dim"], t["num_attention_heads"], t["joint_attention_dim"],
            t["in_channels"], t["out_channels"], t["axes_dims_rope"], t["zero_cond_t"]) == \
        (60, 128, 24, 3584, 64, 16, [16, 56, 56], True)


def test_unknown_arch_and_component_are_named():
    with pytest.raises(ArchError, match="unknown architecture 'sd3'"):
        load_arch("sd3")
    with pytest.raises(ArchError, match="unknown component 'unet'"):
        load_arch("flux2-klein-4b", {"unet": {}})


SHRUNK_FLUX = {"transformer": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "joint_attention_dim": 96},
               "text_encoder": {"hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 28,
                                "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 300}}


def test_random_init_on_device_keeps_buffers_and_samples():
    """Parameters are allocated on the device and filled; computed buffers (RoPE, VAE batch-norm) survive."""
    torch.set_num_threads(1)
    from common.config import PolicyConfig
    cfg = PolicyConfig(family="flux2-klein", dtype="bfloat16", height=64, width=64, reference_size=64,
                       lora={"rank": 4, "alpha": 4.0})
    pol = build_random_policy(cfg, "flux2-klein-4b", overrides=SHRUNK_FLUX)
    pipe = pol.pipe
    assert pipe.transformer.dtype == torch.bfloat16
    assert all(torch.isfinite(p).all() for p in pipe.transformer.parameters())
    assert torch.equal(pipe.vae.bn.running_var, torch.ones_like(pipe.vae.bn.running_var))  # not uninitialised memory
    inv = pipe.text_encoder.model.rotary_emb.inv_freq
    assert inv.dtype == torch.float32 and inv[0] == 1.0 and (inv > 0).all()
    w = pipe.transformer.transformer_blocks[0].attn.to_q.base_layer.weight.float()
    assert w.std().item() == pytest.approx(1 / w.shape[1] ** 0.5, rel=0.1)
    ro = pol.sample_group("a cat", [("subject", _img())], 2,
                          SamplingParams(num_inference_steps=2, height=64, width=64, train_steps=(0,)), seed=0)
    assert ro.images.shape == (2, 64, 64, 3) and torch.isfinite(ro.log_probs).all()


def test_policy_family_must_match_arch():
    from common.config import PolicyConfig
    with pytest.raises(ArchError, match="not of policy family"):
        build_random_policy(PolicyConfig(family="qwen-image-edit-plus"), "flux2-klein-4b")


def _img():
    from PIL import Image
    return Image.new("RGB", (64, 64), (200, 30, 30))
