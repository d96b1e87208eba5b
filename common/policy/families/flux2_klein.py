"""FLUX.2-klein (``policy.family: flux2-klein``): the family class and its tiny pipelines.

A text-only Qwen3 prompt encoder; references become extra latent tokens with RoPE time offsets
(docs/algorithm.md §9). The tiny pipelines are the real diffusers classes with small configs,
seeded and built in code (docs/measurements.md §3, §8).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from common.policy.families.base import Cond, Family, _timestep, _to_uint8
from common.policy.references import CompiledReferences, flux_reference_size
from common.policy.tiny import seeded, small_word_tokenizer, tiny_tokenizer

__all__ = ["FluxFamily", "build_tiny_flux2_klein", "build_small_flux2_klein", "TINY_FLUX_OUT_LAYERS",
           "SMALL_FLUX_OUT_LAYERS"]

# the tiny Qwen3 text encoder has 2 layers; the real Klein takes layers (9, 18, 27)
TINY_FLUX_OUT_LAYERS = (1,)
SMALL_FLUX_OUT_LAYERS = (1,)


class FluxFamily(Family):
    """FLUX.2-klein: Qwen3 text-only prompt encoder; references as extra tokens with RoPE T offsets."""
    name = "flux2-klein"
    pipeline_class = "Flux2KleinPipeline"
    # docs/algorithm.md §9 (the released flux2_klein adapter's defaults)
    default_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                       "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                       "ff_context.linear_out", "attn.to_qkv_mlp_proj")
    # the encoder is text-only, so its embeddings can be recomputed from token ids in every forward
    trains_text_encoder = True
    max_prompt_tokens = 512  # the pipeline pads every prompt to its max_sequence_length, 512 by default

    @classmethod
    def build_tiny(cls, seed, size="tiny"):
        """tiny: :func:`build_tiny_flux2_klein`; small: :func:`build_small_flux2_klein` (docs/measurements.md §8)."""
        if size == "small":
            return build_small_flux2_klein(seed), SMALL_FLUX_OUT_LAYERS
        if size == "tiny":
            return build_tiny_flux2_klein(seed), TINY_FLUX_OUT_LAYERS
        raise ValueError(f"policy.tiny_size must be 'tiny' or 'small' for {cls.name}, got {size!r}")

    @classmethod
    def random_pipeline(cls, cfgs, tokenizer, scheduler, make):
        from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
        from transformers import Qwen3Config, Qwen3ForCausalLM
        te_cfg = {**cfgs["text_encoder"], "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
                  "pad_token_id": tokenizer.pad_token_id}
        tr = make(lambda: Flux2Transformer2DModel(**cfgs["transformer"]), 0)
        vae = make(lambda: AutoencoderKLFlux2(**cfgs["vae"]), 1)
        te = make(lambda: Qwen3ForCausalLM(Qwen3Config(**te_cfg)), 2)
        return Flux2KleinPipeline(scheduler=scheduler, text_encoder=te, tokenizer=tokenizer, transformer=tr, vae=vae)

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


# ---- tiny pipelines (policy.source: tiny) ----

def build_tiny_flux2_klein(seed: int = 0):
    """Flux2KleinPipeline: 1 double + 1 single block (hidden 32), 4-block VAE (scale 8, 1 latent
    channel -> 4 packed channels), 2-layer Qwen3 text encoder (hidden 16). 64 px -> 16 tokens x 4.

    The scheduler shifts sigmas dynamically (``use_dynamic_shifting=True`` + the pipeline's
    ``compute_empirical_mu``) as the real Klein does; a default FlowMatchEulerDiscreteScheduler
    would silently ignore mu and run linear sigmas (docs/measurements.md §7).
    """
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = tiny_tokenizer()
    rng = seeded(seed)
    try:
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=256,
            axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False)
        te = Qwen3ForCausalLM(Qwen3Config(
            hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=len(tok), max_position_embeddings=2048, bos_token_id=None,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        vae = AutoencoderKLFlux2(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4,) * 4, layers_per_block=1,
            latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False)
    finally:
        rng.__exit__(None, None, None)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    pipe = Flux2KleinPipeline(scheduler=sched, text_encoder=te, tokenizer=tok, transformer=transformer, vae=vae)
    for m in (transformer, te, vae):
        m.eval()
    return pipe


def _pixel_codec_cls():
    from types import SimpleNamespace

    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin

    class PixelUnshuffleCodec(ModelMixin, ConfigMixin):
        """Lossless "VAE": pixel-unshuffle x2 (12 latent channels; the pipeline patchifies to 48 =
        4x4 px x RGB per token). BN stats are identity. The Flux2 pipeline needs block_out_channels
        (scale factor), bn running stats, batch_norm_eps, encode().latents and decode(return_dict=False)."""

        @register_to_config
        def __init__(self, block_out_channels=(1, 1), latent_channels=12, batch_norm_eps=0.0):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(4 * latent_channels, affine=False, eps=batch_norm_eps)
            self.bn.running_var.fill_(1.0)
            self._anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # gives the module a dtype/device

        def encode(self, x, return_dict=True):
            lat = torch.nn.functional.pixel_unshuffle(x, 2).to(self._anchor.dtype)
            return SimpleNamespace(latents=lat) if return_dict else (lat,)

        def decode(self, z, return_dict=True):
            img = torch.nn.functional.pixel_shuffle(z, 2)
            return (img,) if not return_dict else SimpleNamespace(sample=img)

    return PixelUnshuffleCodec


def build_small_flux2_klein(seed: int = 0):
    """Flux2KleinPipeline sized for SFT on the synthetic task (docs/measurements.md §8, ~0.37 M transformer
    params): hidden 64 (4 heads x 16), 1 double + 3 single blocks, a lossless pixel-unshuffle codec
    (4x4 px per token, 48 channels: 32 px -> 64 tokens), word-level tokenizer, 2-layer Qwen3 text
    encoder (hidden 32, embeddings at unit scale so the frozen random encoder still separates words).
    Use ``max_sequence_length`` >= 112 for 6-reference synthetic prompts."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = small_word_tokenizer()
    rng = seeded(seed)
    try:
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=48, num_layers=1, num_single_layers=3, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, timestep_guidance_channels=64,
            axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False)
        te = Qwen3ForCausalLM(Qwen3Config(
            hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            head_dim=16, vocab_size=len(tok), max_position_embeddings=2048, bos_token_id=None, initializer_range=0.5,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        vae = _pixel_codec_cls()()
    finally:
        rng.__exit__(None, None, None)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    pipe = Flux2KleinPipeline(scheduler=sched, text_encoder=te, tokenizer=tok, transformer=transformer, vae=vae)
    for m in (transformer, te, vae):
        m.eval()
    return pipe
