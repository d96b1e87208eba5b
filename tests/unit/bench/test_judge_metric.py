"""OmniRef judge scorer against a real local HTTP server (OpenAI-compatible chat completions)."""
from __future__ import annotations

import json

from json_server import JsonServer
from PIL import Image

from common.bench.judge_metric import (JudgeScorer, OpenAICompatibleJudgeClient, applicable_dims,
                                       build_judge_request, parse_omniref_answer)
from common.bench.loader import parse_record

CASE = parse_record({"prompt": "a cat in image 1 in the style of image 2", "index": 5, "category": "subject_style",
                     "edit_image": ["subject_style/2/0/transfer_subjects/a cat.png", "subject_style/2/0/style/reference.png"]})


class _Server(JsonServer):
    """Serves /chat/completions answers from a list (last one repeats); records request bodies."""

    def __init__(self, answers: list[str], status: list[int] | None = None):
        status = status or []

        def answer(path: str, body: dict) -> tuple[int, dict]:
            i = len(self.bodies) - 1
            text = answers[min(i, len(answers) - 1)]
            return (status[i] if i < len(status) else 200,
                    {"choices": [{"message": {"role": "assistant", "content": text}}]})
        super().__init__(answer, path_prefix="/v1")


def _refs():
    return [("subject", Image.new("RGB", (32, 32), (200, 0, 0)), "a cat"),
            ("style", Image.new("RGB", (32, 32), (0, 0, 200)), "reference")]


GOOD = json.dumps({"text_adherence": {"score": 7, "reasoning": "ok"}, "subject_consistency": {"score": 6, "reasoning": ""},
                   "style_consistency": {"score": 5, "reasoning": ""}, "lighting_consistency": {"score": -1, "reasoning": ""},
                   "background_consistency": {"score": -1, "reasoning": ""}, "aesthetic_quality": {"score": 8, "reasoning": ""},
                   "overall_average_score": 6.5})


def test_garbage_answers_are_retried_then_missing_never_zero():
    srv = _Server(["Sure! The image looks great, 8/10.", "{\"text_adherence\": 7,", "```not json```"])
    try:
        scorer = JudgeScorer(OpenAICompatibleJudgeClient(srv.url, "judge", rate_per_min=6000), retries=2)
        out = scorer.score(CASE, Image.new("RGB", (32, 32)), _refs())
    finally:
        srv.close()
    assert len(srv.bodies) == 3                      # 1 try + 2 retries
    assert out == {"judge.text_adherence": None, "judge.subject_consistency": None,
                   "judge.style_consistency": None, "judge.aesthetic_quality": None}
    assert 0 not in out.values()


def test_garbage_then_valid_answer_is_used_and_na_dims_omitted():
    srv = _Server(["no json here", GOOD])
    try:
        scorer = JudgeScorer(OpenAICompatibleJudgeClient(srv.url, "judge", rate_per_min=6000), retries=3)
        out = scorer.score(CASE, Image.new("RGB", (32, 32)), _refs())
    finally:
        srv.close()
    assert len(srv.bodies) == 2
    assert out == {"judge.text_adherence": 7.0, "judge.subject_consistency": 6.0, "judge.style_consistency": 5.0,
                   "judge.aesthetic_quality": 8.0}
    # message: text first, then subject, style, generated (no lighting/background: labelled None)
    content = srv.bodies[1]["messages"][0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "image_url", "image_url"]
    assert "lighting reference: None" in content[0]["text"] and "background reference: None" in content[0]["text"]


def test_http_429_is_backed_off_and_retried():
    srv = _Server([GOOD], status=[429, 200])
    try:
        client = OpenAICompatibleJudgeClient(srv.url, "judge", rate_per_min=6000, http_retries=2)
        client._post.retry.wait = lambda rs: 0      # keep the test fast; the retry policy itself is exercised
        out = JudgeScorer(client, retries=0).score(CASE, Image.new("RGB", (32, 32)), _refs())
    finally:
        srv.close()
    assert len(srv.bodies) == 2 and out["judge.text_adherence"] == 7.0


def test_parse_and_applicability():
    assert parse_omniref_answer("```json\n" + GOOD + "\n```")["aesthetic_quality"] == 8.0
    assert parse_omniref_answer("[1, 2]") is None and parse_omniref_answer("") is None
    assert parse_omniref_answer('{"text_adherence": "high"}')["text_adherence"] is None
    assert applicable_dims(CASE) == ["text_adherence", "subject_consistency", "style_consistency", "aesthetic_quality"]
    text, imgs = build_judge_request(CASE, _refs() + [("pose", Image.new("RGB", (8, 8)), "p")], Image.new("RGB", (9, 9)))
    assert len(imgs) == 3 and imgs[-1].size == (9, 9)          # pose references are not sent


def test_out_of_range_score_is_missing():
    srv = _Server([json.dumps({"text_adherence": 11, "subject_consistency": -1, "style_consistency": 4,
                               "aesthetic_quality": 3})])
    try:
        client = OpenAICompatibleJudgeClient(srv.url, "judge", rate_per_min=6000)
        out = JudgeScorer(client, retries=0).score(CASE, Image.new("RGB", (8, 8)), _refs())
    finally:
        srv.close()
    assert out == {"judge.text_adherence": None, "judge.subject_consistency": None, "judge.style_consistency": 4.0,
                   "judge.aesthetic_quality": 3.0}


def test_tiny_local_vlm_judge_through_adapter_never_scores_zero_for_garbage():
    # the tiny random VLM answers noise: every applicable dimension must come back missing (or a
    # valid 0-10 value if it ever emitted strict JSON), never a silent 0 for an unparsed answer
    import torch
    torch.set_num_threads(1)
    from common.bench.judge_metric import RewardsJudgeClient
    from common.rewards.judge_local import LocalVLMJudge
    client = RewardsJudgeClient(LocalVLMJudge.tiny())
    scorer = JudgeScorer(client, retries=1)
    out = scorer.score(CASE, Image.new("RGB", (32, 32)), _refs())
    assert set(out) == {"judge.text_adherence", "judge.subject_consistency", "judge.style_consistency",
                        "judge.aesthetic_quality"}
    assert scorer.calls == 2 and all(v is None for v in out.values())
