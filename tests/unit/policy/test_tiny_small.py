"""The "small" tiny profile (PolicyConfig.tiny_size=small): lossless codec, word tokenizer, defaults unchanged."""
import numpy as np

from common.config import PolicyConfig
from common.policy import build_policy
from common.policy.tiny import small_word_tokenizer
from common.synthetic import make_split, placement_accuracy


def small_cfg(**kw):
    return PolicyConfig(**{"tiny_size": "small", "height": 32, "width": 32, "reference_size": 16,
                           "max_sequence_length": 112, "eval_inference_steps": 2, **kw})


def test_default_profile_is_unchanged():
    assert PolicyConfig().tiny_size == "tiny"
    assert build_policy(PolicyConfig()).transformer.config.in_channels == 4


def test_codec_is_lossless_and_task_prompts_fit():
    cases = make_split("t", 6, 0, size=32, ref_size=16, max_refs=6, count_weights={6: 1})
    pol = build_policy(small_cfg())
    tok = small_word_tokenizer()
    for c in cases:
        ids = tok(c.prompt)["input_ids"]
        assert len(ids) <= 100 and tok.unk_token_id not in ids, c.prompt
        cond, _, _ = pol.encode(c.prompt, [(r, im) for r, im, _ in c.references])
        assert cond.tensors["image_latents"].shape == (1, 6 * 16, 48)
        x0 = pol.family.encode_target(c.target, 32, 32)
        assert x0.shape == (1, 64, 48)
        img = pol.family.decode(x0, cond)[0]
        assert np.array_equal(img, np.asarray(c.target))  # 4x4 px x RGB per token, exactly
        assert placement_accuracy(img, c) == 1.0
    a = pol.generate(cases[0].prompt, [(r, im) for r, im, _ in cases[0].references], seed=1, output_type="np")
    assert a.shape == (1, 32, 32, 3)
