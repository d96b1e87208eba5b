"""Build the bench scorers from a BenchConfig: real local models or tiny offline ones.

tiny (CI): seeded random CLIP / DINOv2 towers (common.rewards.embedding) and the Gram-statistics
style embedder; the numbers only exercise the pipeline. pretrained: CLIP ViT-B/16 (image_embeds,
as the released CLIP-I), DINOv2-base (token mean of last_hidden_state, as released) and a CSD
checkpoint, all from local folders. Lighting needs no model. Pose runs only when a pose model is
passed in; the judge only when configured.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from PIL import Image

from common.bench.judge_metric import JudgeScorer, OpenAICompatibleJudgeClient
from common.bench.metrics import (BackgroundScorer, Box, LightingMetric, PlacementScorer, PoseScorer, Scorer,
                                  StyleEmbeddingScorer, SubjectFidelityScorer)

__all__ = ["build_scorers", "GroundingDinoDetector"]


class GroundingDinoDetector:
    """GroundingDINO (transformers) from a local folder: top boxes for "<name>." with the released
    thresholds (box 0.35, text 0.25)."""

    def __init__(self, path: str, box_threshold: float = 0.35, text_threshold: float = 0.25, device: str = "cpu"):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        if not os.path.isdir(path):
            raise FileNotFoundError(f"bench.detector_path {path!r} is not a local folder (nothing is downloaded)")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True).to(device).eval()
        self.box_threshold, self.text_threshold, self.device = box_threshold, text_threshold, device

    def detect(self, image: Image.Image, caption: str) -> list[tuple[float, Box]]:
        import torch
        inputs = self.processor(images=image, text=caption.lower(), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        res = self.processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[image.size[::-1]])[0]
        hits = [(float(s), tuple(float(v) for v in b)) for s, b in zip(res["scores"], res["boxes"])]
        return sorted(hits, key=lambda t: -t[0])


def build_scorers(bench_cfg, *, pose_model: Callable[[Image.Image], Any] | None = None,
                  placement: PlacementScorer | None = None, judge_client=None) -> list[Scorer]:
    """Scorers for a BenchConfig. judge_client overrides the configured judge (e.g. a local VLM)."""
    from common.rewards.embedding import EmbeddingModel
    from common.rewards.style import StyleScorer, load_style_embedder

    if bench_cfg.scorer_source == "tiny":
        clip = EmbeddingModel.tiny("clip", "pooler", seed=1)
        dino = EmbeddingModel.tiny("dinov2", "mean", seed=2)
    else:
        missing = [k for k in ("clip_path", "dino_path") if not getattr(bench_cfg, k)]
        if missing:
            raise ValueError(f"bench.scorer_source is 'pretrained' but {', '.join('bench.' + k for k in missing)} is not set")
        clip = EmbeddingModel.pretrained(bench_cfg.clip_path, "clip", "pooler")
        dino = EmbeddingModel.pretrained(bench_cfg.dino_path, "dinov2", "mean")
    style = StyleScorer(load_style_embedder(bench_cfg.style_path, bench_cfg.scorer_source))
    detector = GroundingDinoDetector(bench_cfg.detector_path) if bench_cfg.detector_path else None
    scorers: list[Scorer] = [SubjectFidelityScorer(clip, dino, detector), BackgroundScorer(clip, detector),
                             StyleEmbeddingScorer(style), LightingMetric(), PoseScorer(pose_model)]
    if placement is not None:
        scorers.append(placement)
    if judge_client is None and bench_cfg.judge == "openai":
        if not bench_cfg.judge_url:
            raise ValueError("bench.judge is 'openai' but bench.judge_url is not set")
        judge_client = OpenAICompatibleJudgeClient(bench_cfg.judge_url, bench_cfg.judge_model,
                                                   os.environ.get(bench_cfg.judge_api_key_env),
                                                   rate_per_min=bench_cfg.judge_rate_per_min)
    if judge_client is not None:
        scorers.append(JudgeScorer(judge_client, retries=bench_cfg.judge_retries))
    return scorers
