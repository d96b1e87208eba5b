"""Style scorer: cosine between style embeddings of the generated image and the style reference.

    r = cos(E(gen), E(style_ref)) in [-1, 1]          (docs/algorithm.md §8; raw, no mean-fill)

Samples without a style reference get None (missing). The paper writes NaN and later fills it with
the rank-local mean, which leaks rank-dependent noise into GDPO (docs/algorithm.md §8); we never fill.

Embedders E (each `embed(list[PIL]) -> Tensor[N, D]` with unit rows):
- GramStyleEmbedder ("tiny", no model): colour statistics + Gram matrix of a fixed, seeded filter
  bank (Gatys-style texture statistics). A deterministic stand-in, not a learned style model.
- CSDStyleEmbedder: a CSD checkpoint (learn2phoenix/CSD `CSD_CLIP(name='vit_large')`: OpenAI-CLIP
  ViT-L/14 visual tower with `proj` removed + `last_layer_style` [1024, 768]); style = the
  L2-normalised `ln_post(CLS) @ last_layer_style` (CSD forward output index 2). The OpenAI-CLIP
  weights are converted into a transformers CLIPVisionModel; architecture read from the shapes.
- an HF CLIP folder (config.json) through EmbeddingModel with pooling "pooler" (image_embeds).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.rewards.lighting import srgb_to_lab

__all__ = ["StyleScorer", "GramStyleEmbedder", "CSDStyleEmbedder", "load_style_embedder", "convert_openai_clip_visual"]

_CSD_FILES = ("checkpoint.pth", "pytorch_model.bin", "model.safetensors")


class GramStyleEmbedder:
    """[colour mean/std in LAB | Gram matrix of 8 seeded zero-mean 3x3 filters on L] -> unit vector [N, 6 + 36]."""

    def __init__(self, size: int = 64, n_filters: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n_filters, 1, 3, 3, generator=g, dtype=torch.float64)
        self.filters = w - w.mean(dim=(2, 3), keepdim=True)               # zero-mean: texture, not brightness
        self.size = size

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        if not images or not all(isinstance(im, Image.Image) for im in images):
            raise TypeError("GramStyleEmbedder.embed expects a non-empty list of PIL images")
        out = []
        for im in images:
            lab = srgb_to_lab(np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)))
            lab = torch.from_numpy(lab / 100.0)                              # [S, S, 3], L in [0, 1]
            colour = torch.cat([lab.mean((0, 1)), lab.std((0, 1))])          # [6]
            resp = torch.nn.functional.conv2d(lab[None, None, :, :, 0], self.filters)[0].flatten(1)  # [F, P]
            gram = resp @ resp.T / resp.shape[1]                              # [F, F]
            iu = torch.triu_indices(*gram.shape)
            tex = gram[iu[0], iu[1]]
            # each block normalised on its own so colour and texture weigh the same
            blocks = [b / b.norm().clamp_min(1e-12) for b in (colour, tex)]
            out.append(torch.nn.functional.normalize(torch.cat(blocks), dim=0))
        return torch.stack(out).float()


def convert_openai_clip_visual(sd: dict[str, torch.Tensor]):
    """OpenAI-CLIP `visual.*` weights (no prefix) -> (CLIPVisionConfig, CLIPVisionTransformer state dict).

    Architecture from the shapes: width = conv1 out channels, patch = conv1 kernel, layers = resblocks,
    heads = width // 64 (OpenAI's rule), image = sqrt(positional tokens - 1) * patch.
    """
    from transformers import CLIPVisionConfig
    need = ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_post.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise KeyError(f"not an OpenAI-CLIP visual state dict: missing {missing}")
    width, _, patch, _ = sd["conv1.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    grid = math.isqrt(sd["positional_embedding"].shape[0] - 1)
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           num_hidden_layers=layers, num_attention_heads=max(1, width // 64), patch_size=patch,
                           image_size=grid * patch, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    p = ""
    out = {p + "embeddings.class_embedding": sd["class_embedding"],
           p + "embeddings.patch_embedding.weight": sd["conv1.weight"],
           p + "embeddings.position_embedding.weight": sd["positional_embedding"]}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for t in ("weight", "bias"):
            out[f"{p}{ours}.{t}"] = sd[f"{theirs}.{t}"]
    for i in range(layers):
        s, d = f"transformer.resblocks.{i}.", f"{p}encoder.layers.{i}."
        for t in ("weight", "bias"):
            q, k, v = sd[f"{s}attn.in_proj_{t}"].chunk(3, dim=0)               # MultiheadAttention packs q, k, v
            out.update({f"{d}self_attn.q_proj.{t}": q, f"{d}self_attn.k_proj.{t}": k, f"{d}self_attn.v_proj.{t}": v,
                        f"{d}self_attn.out_proj.{t}": sd[f"{s}attn.out_proj.{t}"],
                        f"{d}layer_norm1.{t}": sd[f"{s}ln_1.{t}"], f"{d}layer_norm2.{t}": sd[f"{s}ln_2.{t}"],
                        f"{d}mlp.fc1.{t}": sd[f"{s}mlp.c_fc.{t}"], f"{d}mlp.fc2.{t}": sd[f"{s}mlp.c_proj.{t}"]})
    return cfg, out


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    # CSD's checkpoint.pth also pickles its argparse.Namespace; allow exactly that, nothing else
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


class CSDStyleEmbedder(torch.nn.Module):
    """CSD style head over a transformers CLIPVisionModel: pixels [B, 3, H, W] -> unit style vectors [B, P]."""

    def __init__(self, tower, style_proj: torch.Tensor, processor):
        super().__init__()
        self.tower, self.processor = tower.eval().requires_grad_(False), processor
        self.style_proj = torch.nn.Parameter(style_proj.float(), requires_grad=False)  # [width, P]

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "CSDStyleEmbedder":
        from transformers import CLIPImageProcessorPil, CLIPVisionModel
        path = Path(path)
        if path.is_dir():
            found = [path / f for f in _CSD_FILES if (path / f).is_file()]
            if not found:
                raise FileNotFoundError(f"style model folder {str(path)!r} holds none of {list(_CSD_FILES)}")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"style model checkpoint {str(path)!r} does not exist (set rewards.style_path "
                                    f"to a local CSD checkpoint; nothing is downloaded)")
        sd = {k.removeprefix("module."): v.float() for k, v in _read_checkpoint(path).items()}
        if "last_layer_style" not in sd:
            raise KeyError(f"{path}: no 'last_layer_style' tensor; not a CSD checkpoint")
        backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
        cfg, hf_sd = convert_openai_clip_visual(backbone)
        tower = CLIPVisionModel(cfg)
        # transformers 4.x nests the tower under "vision_model."; 5.x does not
        prefix = "vision_model." if any(k.startswith("vision_model.") for k in tower.state_dict()) else ""
        missing, unexpected = tower.load_state_dict({prefix + k: v for k, v in hf_sd.items()}, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]    # a buffer, not a weight
        if missing or unexpected:
            raise KeyError(f"{path}: CSD backbone does not match a CLIP vision tower (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
        # CSD's transforms_branch0: resize shorter side (bicubic), centre crop, OpenAI-CLIP mean/std
        proc = CLIPImageProcessorPil(size={"shortest_edge": cfg.image_size},
                                     crop_size={"height": cfg.image_size, "width": cfg.image_size})
        return cls(tower, sd["last_layer_style"], proc)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feature = self.tower(pixel_values=pixel_values).pooler_output       # ln_post(CLS), [B, width]
        return torch.nn.functional.normalize(feature @ self.style_proj, dim=-1)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image], batch_size: int = 16) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            px = self.processor(images=[im.convert("RGB") for im in images[i:i + batch_size]], return_tensors="pt")
            out.append(self(px["pixel_values"].float()))
        return torch.cat(out).float()


def load_style_embedder(path: str | Path | None, source: str = "tiny"):
    """None -> GramStyleEmbedder (tiny only); an HF folder with config.json -> CLIP image_embeds;
    otherwise a CSD checkpoint (file or folder holding checkpoint.pth / pytorch_model.bin / model.safetensors)."""
    if path is None:
        if source == "pretrained":
            raise ValueError("rewards.style_path must point at a local CSD checkpoint when rewards.source is 'pretrained'")
        return GramStyleEmbedder()
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        from common.rewards.embedding import EmbeddingModel
        return EmbeddingModel.pretrained(p, "clip", "pooler")
    return CSDStyleEmbedder.from_checkpoint(p)


class StyleScorer:
    """score(generated, style_refs) -> cosine per sample, None where the sample has no style reference."""

    def __init__(self, embedder):
        self.embedder = embedder

    @classmethod
    def from_config(cls, rewards_cfg) -> "StyleScorer":
        return cls(load_style_embedder(rewards_cfg.style_path, rewards_cfg.source))

    def score(self, generated: list[Image.Image], style_refs: list[Image.Image | None]) -> list[float | None]:
        if len(generated) != len(style_refs):
            raise ValueError(f"StyleScorer.score: {len(generated)} generated images but {len(style_refs)} style references")
        idx = [i for i, r in enumerate(style_refs) if r is not None]
        out: list[float | None] = [None] * len(generated)
        if not idx:
            return out
        emb = self.embedder.embed([generated[i] for i in idx] + [style_refs[i] for i in idx])   # one pass, [2K, D]
        k = len(idx)
        sims = (emb[:k] * emb[k:]).sum(-1).clamp(-1.0, 1.0)
        for j, i in enumerate(idx):
            out[i] = float(sims[j])
        return out
