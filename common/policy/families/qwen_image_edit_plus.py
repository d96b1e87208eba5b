"""Qwen-Image-Edit-Plus (``policy.family: qwen-image-edit-plus``): the family class and its tiny pipeline.

Each reference is shown twice: to the Qwen2.5-VL text encoder ("Picture i") and, VAE-encoded, as
extra latent tokens (docs/algorithm.md §9). The tiny pipeline is the real diffusers classes with
small configs, seeded and built in code (docs/measurements.md §3).
"""
from __future__ import annotations

import math

import torch
from PIL import Image

from common.policy.families.base import Cond, Family, _timestep, _to_uint8
from common.policy.references import CompiledReferences, qwen_preamble, qwen_reference_sizes
from common.policy.tiny import seeded, tiny_processor, tiny_tokenizer

__all__ = ["QwenFamily", "build_tiny_qwen_image_edit_plus"]


class QwenFamily(Family):
    """Qwen-Image-Edit-Plus: references shown to the Qwen2.5-VL encoder ("Picture i") and VAE-encoded."""
    name = "qwen-image-edit-plus"
    pipeline_class = "QwenImageEditPlusPipeline"
    # docs/algorithm.md §9 (the released qwen_image_edit_plus adapter's defaults)
    default_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                       "net.0.proj", "net.2")
    trains_text_encoder = False  # the encoder sees the reference images; cond holds its embeddings only
    max_prompt_tokens = 1024  # the reference truncates the prompt embeddings to 1024 tokens

    @classmethod
    def build_tiny(cls, seed, size="tiny"):
        """:func:`build_tiny_qwen_image_edit_plus`. There is no small Qwen pipeline: ``size`` is not
        read (policy.tiny_size is documented as flux2-klein only)."""
        return build_tiny_qwen_image_edit_plus(seed), None

    @classmethod
    def random_pipeline(cls, cfgs, tokenizer, scheduler, make):
        from diffusers import AutoencoderKLQwenImage, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        te_cfg = dict(cfgs["text_encoder"])
        # the real ids (151652..151656) point into the real vocabulary; the tiny tokenizer's specials sit
        # at 256..263, and the model finds image positions by these ids
        te_cfg.update(_special_ids(tokenizer))
        te_cfg["text_config"] = {**te_cfg["text_config"], "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
                                 "pad_token_id": tokenizer.pad_token_id}
        tr = make(lambda: QwenImageTransformer2DModel(**cfgs["transformer"]), 0)
        vae = make(lambda: AutoencoderKLQwenImage(**cfgs["vae"]), 1)
        te = make(lambda: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**te_cfg)), 2)
        return QwenImageEditPlusPipeline(transformer=tr, vae=vae, scheduler=scheduler, text_encoder=te,
                                         tokenizer=tokenizer, processor=tiny_processor(tokenizer))

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
        pe = pe[:, : self.max_prompt_tokens]
        out = {"prompt_embeds": pe}
        if mask is not None:
            out["prompt_embeds_mask"] = mask[:, : self.max_prompt_tokens]
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
            raise ValueError(f"{self.name} cannot train its text encoder (the encoder sees the reference images)")
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


# ---- tiny pipeline (policy.source: tiny) ----

def _special_ids(tok) -> dict[str, int]:
    """The Qwen2.5-VL config's image/video token ids, as this tokenizer numbers them."""
    return {k: tok.convert_tokens_to_ids(v) for k, v in dict(
        image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>").items()}


def build_tiny_qwen_image_edit_plus(seed: int = 0):
    """QwenImageEditPlusPipeline (recipe D): 2-layer transformer (hidden 48, 16 packed channels),
    VAE scale 4 with z_dim 4, 2-layer Qwen2.5-VL text encoder (hidden 16, 2-layer vision tower).
    64 px -> 64 tokens x 16. Scheduler shaped like Qwen-Image's (dynamic exponential shift)."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    tok = tiny_tokenizer()
    processor = tiny_processor(tok)
    tid = _special_ids(tok)
    rng = seeded(seed)
    try:
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
            num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
        vae = AutoencoderKLQwenImage(
            base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
        te = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "num_key_value_heads": 2, "vocab_size": len(tok), "bos_token_id": None,
                         "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                         "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                         "rope_theta": 1e6},
            vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
            hidden_size=16, vocab_size=len(tok), **tid))
    finally:
        rng.__exit__(None, None, None)
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=math.log(3), max_shift=math.log(3), base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
    pipe = QwenImageEditPlusPipeline(transformer=transformer, vae=vae, scheduler=sched, text_encoder=te,
                                     tokenizer=tok, processor=processor)
    for m in (transformer, te, vae):
        m.eval()
    return pipe
