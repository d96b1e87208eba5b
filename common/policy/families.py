"""Per-family glue on top of the diffusers pipelines: conditioning, velocity, schedule, noise, decode.

Everything model-specific lives here and reuses the pipeline's own methods (encode_prompt,
prepare_image_latents / prepare_latents, _pack_latents, _unpack_*), so the policy's denoising
loop feeds the transformer exactly what ``pipeline.__call__`` feeds it (docs/algorithm.md §9).
Latents are always the pipeline's packed token layout x: [B, S, C] (S image tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from common.policy.references import (CompiledReferences, flux_reference_size, qwen_preamble,
                                      qwen_reference_sizes)

__all__ = ["Cond", "Family", "FluxFamily", "QwenFamily", "family_for", "FLUX_LORA_TARGETS", "QWEN_LORA_TARGETS",
           "TINY_EXTRA_TARGETS"]

# docs/algorithm.md §9 (the released flux2_klein adapter's defaults)
FLUX_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                     "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                     "ff_context.linear_out", "attn.to_qkv_mlp_proj"]
# docs/algorithm.md §9 (the released qwen_image_edit_plus adapter's defaults)
QWEN_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                     "net.0.proj", "net.2"]
# Tiny profile only: with the paper's targets a LoRA on the tiny random transformer barely moves a
# colour reward, which is reached fastest by a token-independent velocity shift that sits behind
# the last block's LayerNorm (docs/measurements.md §7: plateau at -.121 vs learning with these two added).
TINY_EXTRA_TARGETS = ["proj_out", "norm_out.linear"]


@dataclass
class Cond:
    """A group's conditioning, batch 1 (expanded to B without copies at forward time).

    Flux: prompt_embeds [1,L,D], text_ids [1,L,4], latent_ids [1,S,4], optionally image_latents
    [1,R,C] and image_latent_ids [1,R,4]. Qwen: prompt_embeds [1,L,D], optionally
    prompt_embeds_mask [1,L] and image_latents [1,R,C]; meta["img_shapes"] = [(1,h,w), per ref...].
    meta always has family, height, width, seq_len (S), channels (C).
    """
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def batch(self, name: str, b: int) -> torch.Tensor | None:
        t = self.tensors.get(name)
        return None if t is None else t.expand(b, *t.shape[1:])

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Cond":
        out = {}
        for k, t in self.tensors.items():
            floaty = t.is_floating_point() and k != "prompt_embeds_mask"
            out[k] = t.to(device=device, dtype=dtype if (dtype is not None and floaty) else t.dtype)
        return Cond(out, dict(self.meta))

    def to_wire(self) -> dict:
        meta = dict(self.meta)
        if "img_shapes" in meta:
            meta["img_shapes"] = [list(s) for s in meta["img_shapes"]]
        ten = {}
        for k, t in self.tensors.items():
            t = t.detach().cpu()
            ten[k] = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        return {"tensors": ten, "meta": meta}

    @classmethod
    def from_wire(cls, d: dict) -> "Cond":
        from common.codec import to_torch
        meta = dict(d["meta"])
        if "img_shapes" in meta:
            meta["img_shapes"] = [tuple(int(v) for v in s) for s in meta["img_shapes"]]
        return cls({k: to_torch(v) for k, v in d["tensors"].items()}, meta)


def _timestep(sigma, b: int, device, dtype) -> torch.Tensor:
    # the pipelines pass scheduler.timesteps[i] / 1000 with timesteps = sigmas * 1000
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    return (s * 1000).expand(b).to(dtype) / 1000


class Family:
    name = ""
    default_targets: list[str] = []

    def __init__(self, pipe, text_encoder_out_layers=None):
        self.pipe = pipe
        self.out_layers = text_encoder_out_layers
        from diffusers import FlowMatchEulerDiscreteScheduler
        # a private scheduler: computing a schedule must not disturb the pipeline's own state
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    @property
    def multiple(self) -> int:
        """Output height/width must be a multiple of this (VAE scale x 2x2 packing)."""
        return self.pipe.vae_scale_factor * 2

    def schedule(self, num_steps: int, seq_len: int) -> torch.Tensor:
        """sigmas [N+1] (float32, last = 0) exactly as the pipeline computes them."""
        sig = np.linspace(1.0, 1 / num_steps, num_steps)
        kw = {"mu": self.mu(seq_len, num_steps)} if self.scheduler.config.use_dynamic_shifting else {}
        self.scheduler.set_timesteps(sigmas=sig, device="cpu", **kw)
        return self.scheduler.sigmas.detach().to(torch.float32).clone()

    def mu(self, seq_len: int, num_steps: int) -> float:
        raise NotImplementedError


class FluxFamily(Family):
    """FLUX.2-klein: Qwen3 text-only prompt encoder; references as extra tokens with RoPE T offsets."""
    name = "flux2-klein"
    default_targets = FLUX_LORA_TARGETS

    def mu(self, seq_len, num_steps):
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
        return compute_empirical_mu(image_seq_len=seq_len, num_steps=num_steps)

    def _latent_hw(self, height, width):
        f = self.pipe.vae_scale_factor * 2
        return height // f, width // f

    # the layers Flux2KleinPipeline.encode_prompt stacks by default (the real Qwen3 text encoder)
    DEFAULT_OUT_LAYERS = (9, 18, 27)

    def tokenize(self, prompt: str, max_sequence_length: int) -> dict[str, torch.Tensor]:
        """prompt_ids / prompt_mask [1, L] (int64): the pipeline's chat template, padded to L."""
        tok = self.pipe.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=False)
        enc = tok(text, return_tensors="pt", padding="max_length", truncation=True, max_length=max_sequence_length)
        return {"prompt_ids": enc["input_ids"].to(torch.int64), "prompt_mask": enc["attention_mask"].to(torch.int64)}

    def text_embeds(self, text_encoder, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """prompt_embeds [B, L, n_layers·D] from token ids, exactly as the pipeline's encode_prompt
        computes them (stacked hidden states of ``out_layers``), but differentiable: a trainable text
        encoder (``policy.train_text_encoder``) recomputes them in every forward."""
        layers = tuple(self.out_layers) if self.out_layers else self.DEFAULT_OUT_LAYERS
        dev = next(text_encoder.parameters()).device
        out = text_encoder(input_ids=prompt_ids.to(dev), attention_mask=prompt_mask.to(dev),
                           output_hidden_states=True, use_cache=False)
        h = torch.stack([out.hidden_states[k] for k in layers], dim=1)
        b, c, n, d = h.shape
        return h.permute(0, 2, 1, 3).reshape(b, n, c * d)

    def encode_text(self, prompt: str, max_sequence_length: int, device) -> dict[str, torch.Tensor]:
        ids = self.tokenize(prompt, max_sequence_length)
        with torch.no_grad():
            pe = self.text_embeds(self.pipe.text_encoder, ids["prompt_ids"], ids["prompt_mask"])
        pe = pe.to(device=device, dtype=self.pipe.text_encoder.dtype)
        tid = self.pipe._prepare_text_ids(pe).to(device)
        return {"prompt_embeds": pe, "text_ids": tid, "prompt_ids": ids["prompt_ids"].to(device),
                "prompt_mask": ids["prompt_mask"].to(device)}

    def encode(self, prompt: str, refs: CompiledReferences, height: int, width: int, cfg, device,
               negative_prompt: str | None = None) -> tuple[Cond, Cond | None]:
        p = self.pipe
        ten = self.encode_text(prompt, cfg.max_sequence_length, device)
        h, w = self._latent_hw(height, width)
        c = p.transformer.config.in_channels
        ten["latent_ids"] = p._prepare_latent_ids(torch.zeros(1, c, h, w)).to(device)
        if len(refs):
            imgs = []
            for im in refs.images:
                rw, rh = flux_reference_size(im, cfg.reference_size, self.multiple)
                imgs.append(p.image_processor.preprocess(im, height=rh, width=rw, resize_mode="crop"))
            il, iid = p.prepare_image_latents(images=imgs, batch_size=1, generator=None, device=device,
                                              dtype=p.vae.dtype)
            ten["image_latents"], ten["image_latent_ids"] = il, iid
        meta = {"family": self.name, "height": height, "width": width, "seq_len": h * w, "channels": c}
        cond = Cond(ten, meta)
        neg = None
        if negative_prompt is not None:
            nt = self.encode_text(negative_prompt, cfg.max_sequence_length, device)
            neg = Cond({**ten, **nt}, dict(meta))
        return cond, neg

    @torch.no_grad()
    def encode_target(self, image: Image.Image, height: int, width: int, device=None) -> torch.Tensor:
        """Clean latent x0 [1, S, C] of a training target, in the packed layout of :meth:`noise`.

        The same VAE path as the references (``prepare_image_latents``: patchify, BN-normalise, pack),
        with the image centre-cropped/resized to (height, width); :meth:`decode` inverts it.
        """
        p = self.pipe
        img = p.image_processor.preprocess(image, height=height, width=width, resize_mode="crop")
        lat = p._encode_vae_image(img.to(device=device, dtype=p.vae.dtype), generator=None)
        return p._pack_latents(lat).to(torch.float32)

    def noise(self, gen: torch.Generator, cond: Cond, dtype=torch.float32) -> torch.Tensor:
        """One member's initial noise [1, S, C], drawn in the pipeline's layout then packed."""
        h, w = self._latent_hw(cond.meta["height"], cond.meta["width"])
        z = torch.randn((1, cond.meta["channels"], h, w), generator=gen, dtype=torch.float32)
        return self.pipe._pack_latents(z).to(dtype)

    def velocity(self, transformer, cond: Cond, x: torch.Tensor, sigma, text_encoder=None) -> torch.Tensor:
        """v [B,S,C]. With ``text_encoder`` (a trained one) the prompt embeddings are recomputed from
        the cond's token ids, so gradients reach it and cached conds never hold stale embeddings."""
        b, s = x.shape[0], x.shape[1]
        dt = transformer.dtype
        hid, ids = x.to(dt), cond.batch("latent_ids", b)
        if "image_latents" in cond.tensors:
            hid = torch.cat([hid, cond.batch("image_latents", b).to(dt)], dim=1)
            ids = torch.cat([ids, cond.batch("image_latent_ids", b)], dim=1)
        if text_encoder is not None:
            pe = self.text_embeds(text_encoder, cond.tensors["prompt_ids"], cond.tensors["prompt_mask"])
            pe = pe.expand(b, *pe.shape[1:]) if pe.shape[0] == 1 else pe
        else:
            pe = cond.batch("prompt_embeds", b)
        out = transformer(hidden_states=hid, timestep=_timestep(sigma, b, x.device, dt), guidance=None,
                          encoder_hidden_states=pe.to(dt),
                          txt_ids=cond.batch("text_ids", b), img_ids=ids, return_dict=False)[0]
        return out[:, :s].to(torch.float32)

    def guide(self, v_pos, v_neg, scale):
        return v_neg + scale * (v_pos - v_neg)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, cond: Cond) -> np.ndarray:
        """x [B,S,C] -> uint8 [B,H,W,3]."""
        p = self.pipe
        h, w = self._latent_hw(cond.meta["height"], cond.meta["width"])
        lat = p._unpack_latents_with_ids(x.to(p.vae.dtype), cond.batch("latent_ids", x.shape[0]), h, w)
        bn_mean = p.vae.bn.running_mean.view(1, -1, 1, 1).to(lat)
        bn_std = torch.sqrt(p.vae.bn.running_var.view(1, -1, 1, 1) + p.vae.config.batch_norm_eps).to(lat)
        lat = p._unpatchify_latents(lat * bn_std + bn_mean)
        img = p.vae.decode(lat, return_dict=False)[0]
        return _to_uint8(p.image_processor.postprocess(img.float(), output_type="np"))


class QwenFamily(Family):
    """Qwen-Image-Edit-Plus: references shown to the Qwen2.5-VL encoder ("Picture i") and VAE-encoded."""
    name = "qwen-image-edit-plus"
    default_targets = QWEN_LORA_TARGETS
    max_text_tokens = 1024  # the reference truncates the prompt embeddings to 1024 tokens

    def mu(self, seq_len, num_steps):
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift
        c = self.scheduler.config
        return calculate_shift(seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                               c.get("base_shift", 0.5), c.get("max_shift", 1.15))

    def _latent_hw(self, height, width):
        f = self.pipe.vae_scale_factor
        return 2 * (height // (f * 2)), 2 * (width // (f * 2))

    def encode_text(self, prompt: str, enc_images, device) -> dict[str, torch.Tensor]:
        """Variable-length embeddings (no padding), truncated at 1024 tokens as the reference does.
        cfg.max_sequence_length is NOT applied here: the sequence holds the reference images' vision
        tokens too, and cutting it at a small padded length would drop the prompt itself."""
        # the pipeline prepends qwen_preamble(len(enc_images)) itself (_get_qwen_prompt_embeds)
        pe, mask = self.pipe.encode_prompt(prompt=prompt, image=enc_images or None, device=device,
                                           num_images_per_prompt=1)
        pe = pe[:, : self.max_text_tokens]
        out = {"prompt_embeds": pe}
        if mask is not None:
            out["prompt_embeds_mask"] = mask[:, : self.max_text_tokens]
        return out

    def encode(self, prompt, refs: CompiledReferences, height, width, cfg, device, negative_prompt=None):
        p = self.pipe
        enc_images, vae_images, shapes = [], [], []
        h, w = self._latent_hw(height, width)
        f = p.vae_scale_factor
        shapes.append((1, h // 2, w // 2))
        for im in refs.images:
            (vw, vh), (ew, eh) = qwen_reference_sizes(im, cfg.reference_size, cfg.encoder_reference_size)
            enc_images.append(p.image_processor.resize(im, eh, ew))
            vae_images.append(p.image_processor.preprocess(im, vh, vw).unsqueeze(2))
            shapes.append((1, vh // f // 2, vw // f // 2))
        ten = self.encode_text(prompt, enc_images, device)
        c = p.transformer.config.in_channels // 4
        if vae_images:
            dummy = torch.zeros(1, (h // 2) * (w // 2), c * 4)  # given latents: no noise is drawn here
            _, il = p.prepare_latents(vae_images, 1, c, height, width, p.vae.dtype, device, None, dummy)
            ten["image_latents"] = il
        meta = {"family": self.name, "height": height, "width": width, "seq_len": (h // 2) * (w // 2),
                "channels": c * 4, "img_shapes": shapes, "preamble": qwen_preamble(len(refs))}
        cond = Cond(ten, meta)
        neg = None
        if negative_prompt is not None:
            neg = Cond({**{k: v for k, v in ten.items() if not k.startswith("prompt_embeds")},
                        **self.encode_text(negative_prompt, enc_images, device)}, dict(meta))
        return cond, neg

    @torch.no_grad()
    def encode_target(self, image: Image.Image, height: int, width: int, device=None) -> torch.Tensor:
        """Clean latent x0 [1, S, C] of a training target: the pipeline's reference encoding
        (``prepare_latents`` with images: VAE, mean/std normalise, pack) at (height, width)."""
        p = self.pipe
        c = p.transformer.config.in_channels // 4
        img = p.image_processor.preprocess(image, height, width).unsqueeze(2)
        h, w = self._latent_hw(height, width)
        dummy = torch.zeros(1, (h // 2) * (w // 2), c * 4)  # given latents: no noise is drawn here
        _, lat = p.prepare_latents([img.to(dtype=p.vae.dtype)], 1, c, height, width, p.vae.dtype, device, None, dummy)
        return lat.to(torch.float32)

    def noise(self, gen, cond, dtype=torch.float32):
        h, w = self._latent_hw(cond.meta["height"], cond.meta["width"])
        c = cond.meta["channels"] // 4
        z = torch.randn((1, 1, c, h, w), generator=gen, dtype=torch.float32)
        return self.pipe._pack_latents(z, 1, c, h, w).to(dtype)

    def velocity(self, transformer, cond, x, sigma, text_encoder=None):
        if text_encoder is not None:
            raise ValueError("a trainable text encoder is supported for flux2-klein only (Qwen's encoder sees the images)")
        b, s = x.shape[0], x.shape[1]
        dt = transformer.dtype
        hid = x.to(dt)
        if "image_latents" in cond.tensors:
            hid = torch.cat([hid, cond.batch("image_latents", b).to(dt)], dim=1)
        out = transformer(hidden_states=hid, timestep=_timestep(sigma, b, x.device, dt), guidance=None,
                          encoder_hidden_states_mask=cond.batch("prompt_embeds_mask", b),
                          encoder_hidden_states=cond.batch("prompt_embeds", b).to(dt),
                          img_shapes=[list(cond.meta["img_shapes"])] * b, attention_kwargs={}, return_dict=False)[0]
        return out[:, :s].to(torch.float32)

    def guide(self, v_pos, v_neg, scale):
        # true CFG with the pipeline's per-token norm rescale
        comb = v_neg + scale * (v_pos - v_neg)
        return comb * (torch.norm(v_pos, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))

    @torch.no_grad()
    def decode(self, x, cond):
        p = self.pipe
        vae = p.vae
        lat = p._unpack_latents(x, cond.meta["height"], cond.meta["width"], p.vae_scale_factor).to(vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(lat)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(lat)
        img = vae.decode(lat / inv_std + mean, return_dict=False)[0][:, :, 0]
        return _to_uint8(p.image_processor.postprocess(img.float(), output_type="np"))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    # the same rounding as diffusers' numpy_to_pil, so images equal the pipeline's PIL output
    return (arr * 255).round().astype(np.uint8)


def family_for(name: str, pipe, text_encoder_out_layers=None) -> Family:
    if name == "flux2-klein":
        return FluxFamily(pipe, text_encoder_out_layers)
    if name == "qwen-image-edit-plus":
        return QwenFamily(pipe, text_encoder_out_layers)
    raise ValueError(f"unknown policy family {name!r}")


def to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a) for a in images]
