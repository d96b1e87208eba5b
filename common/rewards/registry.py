"""`build_scorer(kind, rewards_cfg, **kw)`: RewardComponent.scorer -> a scorer instance.

| kind       | scorer                         | score(...)                                              |
|------------|--------------------------------|---------------------------------------------------------|
| similarity | SimilarityScorer(EmbeddingModel) | (generated, targets: list[list[PIL]]) -> list[list[float]] |
| style      | StyleScorer                    | (generated, style_refs: list[PIL | None]) -> list[float | None] |
| judge      | LocalVLMJudge / OpenAIJudge    | (requests: list[JudgeRequest]) -> list[dict[str, float | None]] |
| lighting   | LightingScorer                 | (generated, lighting_refs: list[PIL | None]) -> list[float | None] |
| colour     | ColourScorer                   | (generated) -> list[float]                              |
| references | PerReferenceScorer             | (generated, references: list[list[ReferenceInput]], roles) -> list[list[float | None]] |

`kw` overrides constructor arguments (e.g. `dimensions=["background_consistency"]` for a judge
component scored against the background reference, `target_rgb=...` for colour).
"""
from __future__ import annotations

import os

from common.config import RewardsConfig

__all__ = ["SCORER_KINDS", "build_scorer"]

SCORER_KINDS = ("similarity", "style", "judge", "lighting", "colour", "references")


def _judge(cfg: RewardsConfig, **kw):
    if cfg.judge_backend == "openai":
        from common.rewards.judge_openai import OpenAIJudge
        if not cfg.judge_url:
            raise ValueError("rewards.judge_url must be set when rewards.judge_backend is 'openai'")
        args = dict(api_key=os.environ.get(cfg.judge_api_key_env) or None, rate_per_min=cfg.judge_rate_per_min,
                    retries=cfg.judge_retries, parse_retries=cfg.judge_parse_retries, timeout_s=cfg.timeout_s,
                    temperature=cfg.judge_temperature)
        return OpenAIJudge(cfg.judge_url, cfg.judge_model, **(args | kw))
    from common.rewards.judge_local import LocalVLMJudge
    args = dict(mode=cfg.judge_mode, batch_size=cfg.batch_size, parse_retries=cfg.judge_parse_retries) | kw
    if cfg.source == "tiny" and not cfg.judge_path:
        return LocalVLMJudge.tiny(cfg.judge_arch, **args)
    if not cfg.judge_path:
        raise ValueError("rewards.judge_path must be set for a local judge when rewards.source is 'pretrained'")
    return LocalVLMJudge.pretrained(cfg.judge_path, **args)


def build_scorer(kind: str, rewards_cfg: RewardsConfig, **kw):
    """Build the scorer named by `kind` from the rewards section. Raises ValueError on an unknown kind."""
    if kind == "similarity":
        from common.rewards.embedding import EmbeddingModel
        from common.rewards.similarity import SimilarityScorer
        return SimilarityScorer(EmbeddingModel.from_config(rewards_cfg, **kw))
    if kind == "style":
        from common.rewards.style import StyleScorer
        return StyleScorer.from_config(rewards_cfg)
    if kind == "judge":
        return _judge(rewards_cfg, **kw)
    if kind == "lighting":
        from common.rewards.lighting import LightingScorer
        return LightingScorer()
    if kind == "references":
        from common.rewards.per_reference import PerReferenceScorer
        return PerReferenceScorer.from_config(rewards_cfg)
    if kind == "colour":
        from common.rewards.colour import ColourScorer
        return ColourScorer(kw.get("target_rgb", rewards_cfg.colour_target))
    raise ValueError(f"unknown scorer kind {kind!r}; expected one of {SCORER_KINDS}")
