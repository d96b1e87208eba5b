import torch

from common.policy.families.flux2_klein import build_tiny_flux2_klein
from common.policy.tiny import tiny_tokenizer


def test_tokenizer_is_built_in_code_with_specials_and_chat_template():
    tok = tiny_tokenizer()
    assert len(tok) == 264
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 262
    assert tok.decode(tok("héllo")["input_ids"]) == "héllo"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_builders_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_flux2_klein(1)
    after = torch.rand(1)
    assert torch.equal(before, after)  # building draws from a forked RNG
    b, c = build_tiny_flux2_klein(1), build_tiny_flux2_klein(2)
    sa, sb, sc = (m.transformer.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.scheduler.config.use_dynamic_shifting  # Klein's shifted schedule, not recipe E's linear one
