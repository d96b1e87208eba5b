"""LocalVLMJudge on tiny random Qwen2.5-VL / Qwen3-VL models (CPU)."""
import pytest
import torch
from PIL import Image

from common.rewards.judge import DIMENSIONS, JudgeRequest
from common.rewards.judge_local import LocalVLMJudge


def req(roles=("subject",), seed=0):
    g = torch.Generator().manual_seed(seed)
    img = lambda: Image.fromarray((torch.rand(40, 56, 3, generator=g) * 255).byte().numpy())  # noqa: E731
    return JudgeRequest("a red cube left of a blue ball", img(), [(r, img()) for r in roles])


@pytest.fixture(scope="module")
def qwen3():
    return LocalVLMJudge.tiny("qwen3_vl", seed=0)


def test_expected_scores_are_numbers_in_range(qwen3):
    out = qwen3.score([req(("subject", "style")), req(("background",), seed=1)])
    assert set(out[0]) == set(DIMENSIONS)
    for o, present in zip(out, [{"subject_consistency", "style_consistency"}, {"background_consistency"}]):
        for d, v in o.items():
            if d in present | {"text_adherence", "aesthetic_quality"}:
                assert v is not None and 0.0 <= v <= 10.0, (d, v)
            else:
                assert v == -1.0
    assert qwen3.stats["requests"] == 4 + 3


def test_expected_score_formula_and_batch_invariance(qwen3):
    from common.rewards.judge import build_judge_parts
    r = req(("subject",))
    rendered = qwen3._render(build_judge_parts(r, ["subject_consistency"], "score"), '{"score": 1')
    # by hand: one forward, digits at the position before the forced "1", "0"-vs-terminators after it
    inputs = qwen3._inputs([rendered], "right")
    with torch.no_grad():
        logits = qwen3.model(**inputs).logits[0]
    p = torch.softmax(logits[-2, qwen3.digit_ids], -1)
    cand = torch.softmax(logits[-1, [qwen3.digit_ids[0], *qwen3.stop_ids]], -1)
    want = float((p * torch.arange(10.0)).sum() + 9 * p[1] * cand[0])
    other = qwen3._render(build_judge_parts(req(("style", "lighting"), seed=3), ["style_consistency"], "score"),
                          '{"score": 1')
    got = qwen3.expected_scores([rendered, other])                     # padded batch of two
    assert got[0] == pytest.approx(want, abs=1e-4)
    assert got[1] == pytest.approx(qwen3.expected_scores([other])[0], abs=1e-4)


def test_qwen25_and_generate_mode_records_missing():
    j = LocalVLMJudge.tiny("qwen2_5_vl", seed=1, mode="generate", max_new_tokens=6,
                           dimensions=["text_adherence", "style_consistency"])
    (out,) = j.score([req(())])
    # a random model writes gibberish: missing, never 0; style has no reference: -1
    assert out == {"text_adherence": None, "style_consistency": -1.0}
    assert j.stats["missing_fields"] == 1
    e = LocalVLMJudge.tiny("qwen2_5_vl", seed=1, dimensions=["text_adherence"]).score([req(())])
    assert 0.0 <= e[0]["text_adherence"] <= 10.0


def test_pretrained_roundtrip_and_errors(tmp_path, qwen3):
    d = tmp_path / "judge"
    qwen3.model.save_pretrained(d)
    qwen3.tok.save_pretrained(d)
    qwen3.processor.image_processor.save_pretrained(d)
    j = LocalVLMJudge.pretrained(d, max_side=64)
    r = [req(("subject",), seed=5)]
    a, b = j.score(r)[0], qwen3.score(r)[0]
    assert all(a[k] == pytest.approx(b[k], abs=1e-4) for k in a)
    with pytest.raises(FileNotFoundError, match="config.json"):
        LocalVLMJudge.pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="mode"):
        LocalVLMJudge(qwen3.model, qwen3.processor, mode="vote")
    with pytest.raises(ValueError, match="arch"):
        LocalVLMJudge.tiny("llava")
