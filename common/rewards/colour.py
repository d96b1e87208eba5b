"""A simple learnable reward for tests and demos (docs/measurements.md §7):

    r = −‖mean_rgb(img) − target‖₂,    img in [0, 1], target in [0, 1]^3        (r <= 0, 0 is best)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["ColourScorer", "DEFAULT_TARGET_RGB"]

DEFAULT_TARGET_RGB = (0.36, 0.56, 0.30)     # what the tiny Flux2Klein VAE can reach (docs/measurements.md §7)


class ColourScorer:
    """score(images) -> one raw reward per image. Accepts PIL images or a float tensor [N, 3, H, W] in [0, 1]."""

    def __init__(self, target_rgb: Sequence[float] = DEFAULT_TARGET_RGB):
        t = np.asarray(target_rgb, dtype=np.float64)
        if t.shape != (3,) or not np.all((t >= 0) & (t <= 1)):
            raise ValueError(f"target_rgb must be 3 values in [0, 1], got {list(target_rgb)}")
        self.target = t

    def score(self, images: list[Image.Image] | torch.Tensor) -> list[float]:
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"ColourScorer expects a tensor [N, 3, H, W], got {tuple(images.shape)}")
            means = images.detach().float().clamp(0, 1).mean((2, 3)).cpu().double().numpy()     # [N, 3]
        else:
            if not all(isinstance(im, Image.Image) for im in images):
                raise TypeError("ColourScorer expects PIL images or a tensor [N, 3, H, W]")
            means = np.array([np.asarray(im.convert("RGB"), dtype=np.float64).mean((0, 1)) / 255.0 for im in images])
        if len(means) == 0:
            return []
        return [float(-np.linalg.norm(m - self.target)) for m in means]
