"""Where is this subject? An image-guided open-vocabulary detector for the per-reference reward.

On the synthetic task every subject's box is known from the case's metadata; on real data it is
not, and a subject's s_j must still look at the region where that subject is (docs/learning.md §3).
OWL-ViT's image-guided detection answers exactly that question — "find this reference image in
that generated image" — without a subject name: it embeds the reference as a query and scores
every predicted box of the generated image against it.

    box_j = the predicted box with the highest query logit for reference j      (x0, y0, x1, y1) in [0, 1]

The best box is always returned (with its logit): an absent subject gets a poor box, and the crop
scores low against the reference, which is what a reward should say. ``rewards.detector: owlvit``
loads a local checkpoint (``rewards.detector_path``, e.g. google/owlvit-base-patch32 or an OWLv2
folder) with ``source: pretrained``; ``source: tiny`` builds a small randomly initialised one from a
config (CPU tests: the wiring is real, the boxes are arbitrary). Nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["SubjectDetector", "Box"]

Box = tuple[float, float, float, float]

# CLIP's pixel statistics: what every OWL-ViT / OWLv2 processor normalises with
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)


class SubjectDetector:
    """``locate(image, references) -> [(box, logit)]``: one box per reference, in reference order."""

    def __init__(self, model, image_size: int, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.image_size, self.device = int(image_size), device

    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 64) -> "SubjectDetector":
        """A randomly initialised OWL-ViT (≈50 k parameters) built from a config: CPU tests."""
        from transformers import OwlViTConfig, OwlViTForObjectDetection
        cfg = OwlViTConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=image_size, patch_size=16),
            projection_dim=16)
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            model = OwlViTForObjectDetection(cfg)
        return cls(model, image_size)

    @classmethod
    def pretrained(cls, path: str, device: str = "cpu") -> "SubjectDetector":
        from transformers import AutoConfig, Owlv2ForObjectDetection, OwlViTForObjectDetection
        if not os.path.isdir(path):
            raise FileNotFoundError(f"rewards.detector_path {path!r} is not a local folder (nothing is downloaded)")
        kind = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if kind not in ("owlvit", "owlv2"):
            raise ValueError(f"rewards.detector_path {path!r} holds a {kind!r} model; expected owlvit or owlv2")
        model_cls = Owlv2ForObjectDetection if kind == "owlv2" else OwlViTForObjectDetection
        model = model_cls.from_pretrained(path, local_files_only=True)
        return cls(model, model.config.vision_config.image_size, device)

    @classmethod
    def from_config(cls, rewards_cfg) -> "SubjectDetector | None":
        """From a RewardsConfig: ``detector`` none|owlvit, ``source`` tiny|pretrained, ``detector_path``."""
        if rewards_cfg.detector == "none":
            return None
        if rewards_cfg.source == "tiny":
            return cls.tiny()
        return cls.pretrained(rewards_cfg.detector_path)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Square resize + CLIP normalisation (what the OWL processors do, without their files)."""
        s = self.image_size
        arr = np.stack([np.asarray(im.convert("RGB").resize((s, s), Image.BICUBIC), dtype=np.float32) / 255.0
                        for im in images])
        x = (torch.from_numpy(arr) - torch.tensor(_MEAN)) / torch.tensor(_STD)
        return x.permute(0, 3, 1, 2).to(self.device)

    @torch.inference_mode()
    def locate(self, image: Image.Image, references: Sequence[Image.Image]) -> list[tuple[Box, float]]:
        if not references:
            return []
        n = len(references)
        target = self._pixels([image]).expand(n, -1, -1, -1)
        out = self.model.image_guided_detection(pixel_values=target, query_pixel_values=self._pixels(references))
        logits = out.logits[..., 0].float()                         # [n, boxes]: box b vs query j
        best = logits.argmax(-1)
        found = []
        for j in range(n):
            cx, cy, w, h = (float(v) for v in out.target_pred_boxes[j, best[j]])
            box = (min(max(cx - w / 2, 0.0), 1.0), min(max(cy - h / 2, 0.0), 1.0),
                   min(max(cx + w / 2, 0.0), 1.0), min(max(cy + h / 2, 0.0), 1.0))
            found.append((box, float(logits[j, best[j]])))
        return found
