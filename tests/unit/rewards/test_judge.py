"""Rubric layout and strict parsing: an invalid answer is missing (None), never 0."""
import json

import pytest
from PIL import Image

from common.rewards.judge import (DIMENSIONS, JudgeBase, JudgeRequest, applicable_dimensions, build_judge_parts,
                                  judge_mean, parse_judge_answer)

D = list(DIMENSIONS)


def test_parse_valid_forms():
    ans = {d: {"score": 8, "reasoning": "x"} for d in D} | {"overall_average_score": 8}
    assert parse_judge_answer(json.dumps(ans), D) == {d: 8.0 for d in D}
    fenced = "```json\n" + json.dumps({"text_adherence": 6.5, "aesthetic_quality": {"score": 0}}) + "\n```"
    out = parse_judge_answer(fenced, ["text_adherence", "aesthetic_quality"])
    assert out == {"text_adherence": 6.5, "aesthetic_quality": 0.0}           # a real 0 stays 0
    chatty = 'Sure! Here it is: {"text_adherence": {"score": 10}} hope it helps'
    assert parse_judge_answer(chatty, ["text_adherence"]) == {"text_adherence": 10.0}


@pytest.mark.parametrize("text", [None, "", "no json here", "{broken", "[1, 2]", '"8"', "8",
                                  '{"text_adherence": "8"}', '{"text_adherence": 11}', '{"text_adherence": -0.5}',
                                  '{"text_adherence": null}', '{"text_adherence": true}', '{"text_adherence": NaN}',
                                  '{"text_adherence": {"reasoning": "no score"}}', '{"other": 5}',
                                  '{"text_adherence": -1}'])
def test_parse_invalid_is_missing(text):
    assert parse_judge_answer(text, ["text_adherence"]) == {"text_adherence": None}


def test_not_applicable_is_minus_one_whatever_the_answer():
    out = parse_judge_answer('{"style_consistency": 9, "text_adherence": 4}', ["text_adherence", "style_consistency"],
                             not_applicable={"style_consistency"})
    assert out == {"text_adherence": 4.0, "style_consistency": -1.0}
    assert judge_mean(out) == 4.0
    assert judge_mean({"a": None, "b": -1.0}) is None


def test_applicable_dimensions_and_prompt_order():
    assert applicable_dimensions(["pose"]) == {"text_adherence", "aesthetic_quality"}
    assert applicable_dimensions(["background", "subject"]) >= {"background_consistency", "subject_consistency"}
    gen, s1, s2, bg, pose = (Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(5))
    req = JudgeRequest("p", gen, [("background", bg), ("subject", s1), ("pose", pose), ("subject", s2)])
    parts = build_judge_parts(req, D)
    images = [p for p in parts if isinstance(p, Image.Image)]
    assert images == [s1, s2, bg, gen]                                     # subjects, (style), (lighting), bg, generated
    text = "".join(p for p in parts if isinstance(p, str))
    assert "Style reference: None" in text and "Lighting reference: None" in text
    for d in D:
        assert d in text
    with pytest.raises(ValueError, match="dimensions"):
        build_judge_parts(req, ["pose_consistency"])
    with pytest.raises(ValueError, match="roles"):
        build_judge_parts(JudgeRequest("p", gen, [("depth", bg)]), D)


class Scripted(JudgeBase):
    def __init__(self, answers, **kw):
        super().__init__(**kw)
        self.answers, self.calls = list(answers), 0

    def complete(self, parts):
        self.calls += 1
        return self.answers.pop(0) if self.answers else None


def test_retry_keeps_best_and_records_missing():
    req = JudgeRequest("p", Image.new("RGB", (8, 8)), [("style", Image.new("RGB", (8, 8)))])
    dims = ["text_adherence", "style_consistency", "lighting_consistency"]
    j = Scripted(['{"text_adherence": 3}', "garbage", None], dimensions=dims, parse_retries=2)
    (out,) = j.score([req])
    assert j.calls == 3
    assert out == {"text_adherence": 3.0, "style_consistency": None, "lighting_consistency": -1.0}
    j = Scripted(['{"text_adherence": 3, "style_consistency": 2}'], dimensions=dims)
    assert j.score([req])[0]["style_consistency"] == 2.0 and j.calls == 1
    # nothing applicable: no call at all
    j = Scripted([], dimensions=["lighting_consistency"])
    assert j.score([req]) == [{"lighting_consistency": -1.0}] and j.calls == 0
    with pytest.raises(ValueError, match="subset"):
        Scripted([], dimensions=["beauty"])
