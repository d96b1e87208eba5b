"""policy.train_text_encoder: a trainable text encoder (FLUX.2-klein) and how its weights travel."""
import pytest
import torch

from common.config import PolicyConfig
from common.policy import TrainableStateError, build_policy

PROMPT = "put a red circle from image 1 at the top left"


def small(**kw) -> PolicyConfig:
    return PolicyConfig(**{"tiny_size": "small", "height": 32, "width": 32, "reference_size": 16,
                           "max_sequence_length": 32, "finetune": "full", **kw})


def test_embeddings_from_ids_equal_the_pipeline_encoder():
    pol = build_policy(small())
    cond, _, _ = pol.encode(PROMPT, None)
    pe, _ = pol.pipe.encode_prompt(prompt=PROMPT, device="cpu", max_sequence_length=32, text_encoder_out_layers=(1,))
    assert torch.equal(cond.tensors["prompt_embeds"], pe)
    again = pol.family.text_embeds(pol.pipe.text_encoder, cond.tensors["prompt_ids"], cond.tensors["prompt_mask"])
    assert torch.equal(again, pe)


def test_trainable_text_encoder_gets_gradients_and_travels_in_the_state(tmp_path):
    pol = build_policy(small(train_text_encoder=True)).train()
    names = [n for n, _ in pol.named_trainable_parameters()]
    te = [n for n in names if n.startswith("text_encoder.")]
    assert te and len(te) == len(list(pol.pipe.text_encoder.parameters()))
    cond, _, _ = pol.encode(PROMPT, None)
    x = torch.randn(2, cond.meta["seq_len"], cond.meta["channels"])
    pol.velocity(cond, x, 0.6).square().mean().backward()
    grads = dict(pol.named_trainable_parameters())
    assert all(grads[n].grad is not None and grads[n].grad.abs().sum() > 0 for n in te if "embed_tokens" in n)
    # move the encoder: the velocity must change (it is recomputed from the token ids, not cached)
    v0 = pol.velocity(cond, x, 0.6).detach()
    with torch.no_grad():
        pol.pipe.text_encoder.model.embed_tokens.weight.add_(0.5)
    assert not torch.allclose(pol.velocity(cond, x, 0.6), v0)
    # the state carries the encoder; a second trainable-encoder policy loads it exactly
    path = tmp_path / "trainable.safetensors"
    path.write_bytes(pol.trainable_state())
    other = build_policy(small(train_text_encoder=True, init_weights=str(path)))
    assert other.trainable_state() == pol.trainable_state()


def test_frozen_encoder_loads_from_the_init_weights_and_is_not_published(tmp_path):
    sft = build_policy(small(train_text_encoder=True))
    with torch.no_grad():
        for p in sft.trainable_parameters():
            p.add_(0.03 * torch.randn_like(p))
    path = tmp_path / "sft.safetensors"
    path.write_bytes(sft.trainable_state())
    rl = build_policy(small(init_weights=str(path)))   # the RL policy: encoder frozen
    assert all(not n.startswith("text_encoder.") for n, _ in rl.named_trainable_parameters())
    for (n, a), b in zip(sft.pipe.text_encoder.named_parameters(), rl.pipe.text_encoder.parameters()):
        assert torch.equal(a, b), n
    cond_a, _, _ = sft.eval().encode(PROMPT, None)
    cond_b, _, _ = rl.eval().encode(PROMPT, None)
    x = torch.randn(1, cond_a.meta["seq_len"], cond_a.meta["channels"])
    assert torch.allclose(sft.velocity(cond_a, x, 0.5), rl.velocity(cond_b, x, 0.5), atol=1e-6)
    # a generator built the same way loads the RL policy's published state (transformer only)
    gen = build_policy(small(init_weights=str(path)))
    gen.load_trainable_state(rl.trainable_state())


def test_init_weights_with_a_wrong_encoder_is_refused(tmp_path):
    sft = build_policy(small(train_text_encoder=True))
    state = {n: p.detach().clone() for n, p in sft.named_trainable_parameters()}
    key = next(n for n in state if n.startswith("text_encoder."))
    state[key] = torch.zeros(3, 3)
    from common.codec import state_to_bytes
    path = tmp_path / "bad.safetensors"
    path.write_bytes(state_to_bytes(state))
    with pytest.raises(TrainableStateError, match="text encoder"):
        build_policy(small(init_weights=str(path)))


def test_qwen_family_refuses_a_trainable_text_encoder():
    with pytest.raises(ValueError, match="train_text_encoder"):
        PolicyConfig(family="qwen-image-edit-plus", train_text_encoder=True)
