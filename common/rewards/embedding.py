"""Image embedders over transformers vision towers: SigLIP / SigLIP2, CLIP (with projection), DINOv2.

    f(x) = normalize(pool(tower(x)))          pool in {"mean", "pooler", "flat"}

- "mean":   token mean of last_hidden_state                      -> [N, hidden]
- "pooler": pooler_output (SigLIP attention head, DINOv2 CLS after layernorm) or image_embeds
            (CLIP projection)                                     -> [N, hidden | proj]
- "flat":   the whole last_hidden_state flattened (tokens x hidden), the paper's released mode
            (docs/algorithm.md §8): cosine of two such vectors is a spatially aligned, token-by-token
            similarity                                            -> [N, tokens * hidden]

Sources: "tiny" builds a seeded random tower from a small config (docs/measurements.md §3; offline),
"pretrained" loads a local folder; its config's model_type decides the class (so a SigLIP2 NaFlex
checkpoint gets Siglip2VisionModel, google/siglip2-base-patch16-384 — whose config says "siglip" —
gets SiglipVisionModel). Nothing is ever downloaded. Image processors are the *ImageProcessorPil
classes (torchvision is unavailable).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

__all__ = ["Backend", "Pooling", "EmbeddingModel", "tiny_vision_tower"]

Backend = Literal["siglip", "clip", "dinov2"]
Pooling = Literal["mean", "pooler", "flat"]

# model_type in a checkpoint's config.json -> (family, variant). SigLIP2 is a SigLIP family member.
_MODEL_TYPES = {
    "siglip": ("siglip", "siglip"), "siglip_vision_model": ("siglip", "siglip"),
    "siglip2": ("siglip", "siglip2"), "siglip2_vision_model": ("siglip", "siglip2"),
    "clip": ("clip", "clip"), "clip_vision_model": ("clip", "clip"),
    "dinov2": ("dinov2", "dinov2"),
}


def _classes(variant: str):
    """(model class, image processor class) of one variant; imported lazily (transformers is slow to import)."""
    import transformers as tf
    return {
        "siglip": (tf.SiglipVisionModel, tf.SiglipImageProcessorPil),
        "siglip2": (tf.Siglip2VisionModel, tf.Siglip2ImageProcessorPil),
        "clip": (tf.CLIPVisionModelWithProjection, tf.CLIPImageProcessorPil),
        "dinov2": (tf.Dinov2Model, tf.BitImageProcessorPil),
    }[variant]


def tiny_vision_tower(backend: Backend, seed: int = 0, image_size: int = 64, hidden_size: int = 32):
    """A seeded random tiny tower and its processor (recipe H, smaller image so tests stay fast).

    Tokens: SigLIP (64/16)^2 = 16, CLIP 16 + CLS, DINOv2 (56/14)^2 = 16 + CLS.
    """
    import transformers as tf
    common = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backend == "siglip":
            model = tf.SiglipVisionModel(tf.SiglipVisionConfig(image_size=image_size, patch_size=16, **common))
            proc = tf.SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        elif backend == "clip":
            model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(image_size=image_size, patch_size=16,
                                                                         projection_dim=hidden_size, **common))
            proc = tf.CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
        elif backend == "dinov2":
            side = 14 * (image_size // 16)
            model = tf.Dinov2Model(tf.Dinov2Config(image_size=side, patch_size=14, **common))
            proc = tf.BitImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        else:
            raise ValueError(f"unknown embedding backend {backend!r}; expected siglip, clip or dinov2")
    return model, proc


class EmbeddingModel:
    """L2-normalised image embeddings from one vision tower.

    Args:
        model / processor: a transformers vision tower and its *ImageProcessorPil.
        variant: "siglip" | "siglip2" | "clip" | "dinov2" (how to call the tower).
        pooling: "mean" | "pooler" | "flat".
        batch_size: images per forward pass.
    """

    def __init__(self, model, processor, variant: str, pooling: Pooling = "flat", *, batch_size: int = 16,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        if pooling not in ("mean", "pooler", "flat"):
            raise ValueError(f"unknown pooling {pooling!r}; expected mean, pooler or flat")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.variant, self.pooling, self.batch_size = variant, pooling, batch_size
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.processor = processor

    @classmethod
    def tiny(cls, backend: Backend = "siglip", pooling: Pooling = "flat", *, seed: int = 0, **kw) -> "EmbeddingModel":
        model, proc = tiny_vision_tower(backend, seed=seed)
        return cls(model, proc, backend, pooling, **kw)

    @classmethod
    def pretrained(cls, path: str | Path, backend: Backend | None = None, pooling: Pooling = "flat", **kw) -> "EmbeddingModel":
        """Load a local checkpoint folder (config.json + weights + preprocessor_config.json); never downloads."""
        from transformers import AutoConfig
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"embedding model path {str(path)!r} has no config.json (a local folder is required; "
                                    f"nothing is downloaded)")
        if not (path / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"embedding model path {str(path)!r} has no preprocessor_config.json")
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if model_type not in _MODEL_TYPES:
            raise ValueError(f"{path}: model_type {model_type!r} is not a supported embedder ({sorted(_MODEL_TYPES)})")
        family, variant = _MODEL_TYPES[model_type]
        if backend is not None and backend != family:
            raise ValueError(f"{path}: config says {model_type!r} ({family}) but embedding_backend is {backend!r}")
        model_cls, proc_cls = _classes(variant)
        model = model_cls.from_pretrained(path, local_files_only=True)
        proc = proc_cls.from_pretrained(path, local_files_only=True)
        return cls(model, proc, variant, pooling, **kw)

    @classmethod
    def from_config(cls, rewards_cfg, **kw) -> "EmbeddingModel":
        """From a RewardsConfig: source, embedding_backend, embedding_path, pooling, batch_size."""
        kw.setdefault("batch_size", rewards_cfg.batch_size)
        if rewards_cfg.source == "tiny":
            return cls.tiny(rewards_cfg.embedding_backend, rewards_cfg.pooling, **kw)
        if not rewards_cfg.embedding_path:
            raise ValueError("rewards.embedding_path must be set when rewards.source is 'pretrained'")
        return cls.pretrained(rewards_cfg.embedding_path, rewards_cfg.embedding_backend, rewards_cfg.pooling, **kw)

    def _inputs(self, images: list[Image.Image]) -> dict:
        images = [im.convert("RGB") for im in images]
        if self.variant == "siglip2":
            # NaFlex keeps aspect ratio, so token grids of differently shaped images would not line up
            # (and "flat" would compare unrelated tokens): resize everything to one square grid first.
            side = self.processor.patch_size * int(math.isqrt(self.processor.max_num_patches))
            images = [im.resize((side, side), Image.BICUBIC) for im in images]
        out = self.processor(images=images, return_tensors="pt")
        return {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in out.items()}

    def _pool(self, out, inputs) -> torch.Tensor:
        hidden = out.last_hidden_state                                     # [B, T, D]
        mask = inputs.get("pixel_attention_mask")                          # SigLIP2 padding, [B, T]
        if mask is not None:
            hidden = hidden * mask[..., None].to(hidden.dtype)
        if self.pooling == "flat":
            return hidden.flatten(1)                                       # [B, T*D]
        if self.pooling == "mean":
            if mask is not None:
                return hidden.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(hidden.dtype)
            return hidden.mean(1)                                          # [B, D]
        if self.variant == "clip":
            return out.image_embeds                                        # [B, proj]
        if out.pooler_output is None:
            raise ValueError(f"{self.variant} tower has no pooler output (vision_use_head=False); use mean or flat")
        return out.pooler_output                                           # [B, D]

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """images: list of N PIL images -> float32 CPU tensor [N, D], each row of unit L2 norm."""
        if not isinstance(images, (list, tuple)) or not all(isinstance(im, Image.Image) for im in images):
            raise TypeError("EmbeddingModel.embed expects a list of PIL images")
        if not images:
            raise ValueError("EmbeddingModel.embed got no images")
        chunks = []
        for i in range(0, len(images), self.batch_size):
            inputs = self._inputs(list(images[i:i + self.batch_size]))
            feats = self._pool(self.model(**inputs), inputs).float()
            chunks.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
        return torch.cat(chunks)
