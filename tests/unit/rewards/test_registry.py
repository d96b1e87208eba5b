"""build_scorer: every RewardComponent.scorer value maps to a working scorer; colour reward is exact."""
import typing

import numpy as np
import pytest
import torch
from PIL import Image

from common.config import RewardComponent, RewardsConfig
from common.rewards.colour import ColourScorer
from common.rewards.judge import JudgeRequest
from common.rewards.registry import SCORER_KINDS, build_scorer


def test_kinds_cover_the_config_literal():
    literal = typing.get_args(RewardComponent.model_fields["scorer"].annotation)
    assert set(literal) == set(SCORER_KINDS)


def test_each_kind_builds_and_scores():
    cfg = RewardsConfig(source="tiny")
    img = Image.new("RGB", (32, 32), (90, 140, 80))
    other = Image.new("RGB", (32, 32), (10, 20, 200))
    sim = build_scorer("similarity", cfg)
    assert sim.score([img], [[img, other]])[0][0] == pytest.approx(1.0, abs=1e-5)
    assert build_scorer("style", cfg).score([img, img], [other, None])[1] is None
    assert build_scorer("lighting", cfg).score([img], [img]) == [pytest.approx(100.0)]
    assert build_scorer("colour", cfg).score([img])[0] <= 0
    judge = build_scorer("judge", cfg, dimensions=["background_consistency"])
    (out,) = judge.score([JudgeRequest("p", img, [("background", other)])])
    assert 0.0 <= out["background_consistency"] <= 10.0
    with pytest.raises(ValueError, match="unknown scorer kind"):
        build_scorer("pickscore", cfg)
    with pytest.raises(ValueError, match="judge_url"):
        build_scorer("judge", RewardsConfig(judge_backend="openai"))
    with pytest.raises(ValueError, match="judge_path"):
        build_scorer("judge", RewardsConfig(source="pretrained"))


def test_openai_judge_from_config(monkeypatch):
    monkeypatch.setenv("MY_KEY", "secret")
    j = build_scorer("judge", RewardsConfig(judge_backend="openai", judge_url="http://127.0.0.1:9/v1",
                                            judge_api_key_env="MY_KEY", judge_rate_per_min=30))
    assert j.url == "http://127.0.0.1:9/v1/chat/completions"
    assert j.client.headers["Authorization"] == "Bearer secret" and j.limiter.interval == pytest.approx(2.0)
    j.close()


def test_colour_reward_exact():
    s = ColourScorer((0.5, 0.25, 1.0))
    img = Image.new("RGB", (8, 8), (255, 0, 255))
    assert s.score([img]) == [pytest.approx(-np.linalg.norm([0.5, -0.25, 0.0]))]
    t = torch.zeros(2, 3, 4, 4)
    t[1, 0] = 0.5
    t[1, 1] = 0.25
    t[1, 2] = 1.0
    out = s.score(t)
    assert out[1] == pytest.approx(0.0, abs=1e-7) and out[0] == pytest.approx(-np.linalg.norm([0.5, 0.25, 1.0]))
    assert build_scorer("colour", RewardsConfig(), target_rgb=(0.5, 0.25, 1.0)).score(t)[1] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="target_rgb"):
        ColourScorer((2, 0, 0))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        s.score(torch.zeros(3, 4, 4))
