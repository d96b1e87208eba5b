"""Offline builders: tiny randomly initialised pipelines (cpu-tiny profile) and local pretrained ones.

Tiny pipelines are the real diffusers pipeline classes with small configs (docs/measurements.md
§3), built entirely in code: no hub, no network, no files. Weights are seeded, so the same
seed gives bit-identical models in every process (generators and learner agree without shipping
weights). ``load_pretrained`` only reads a local directory (``local_files_only``) and never downloads.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["tiny_tokenizer", "tiny_processor", "build_tiny_flux2_klein", "build_tiny_qwen_image_edit_plus",
           "load_pretrained", "PolicyLoadError", "TINY_FLUX_OUT_LAYERS",
           "build_small_flux2_klein", "small_word_tokenizer", "SMALL_FLUX_OUT_LAYERS"]

# the tiny Qwen3 text encoder has 2 layers; the real Klein takes layers (9, 18, 27)
TINY_FLUX_OUT_LAYERS = (1,)

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


class PolicyLoadError(ValueError):
    """A pretrained pipeline that is missing or unreadable at the configured path."""


def tiny_tokenizer():
    """Byte-level Qwen2 tokenizer (264 tokens; specials at 256..263) with a chat template (recipe A)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {c: i for i, c in enumerate(sorted(set(bytes_to_unicode().values())))}
    for s in _SPECIALS:
        vocab[s] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": _SPECIALS[1:]})
    # Flux2Klein renders the prompt through the chat template (enable_thinking is ignored here)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def tiny_processor(tok):
    """Qwen2-VL processor without torchvision (recipe C)."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    class _Proc(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return _Proc(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tok, video_processor=None)


def _seeded(seed: int):
    rng = torch.random.fork_rng(devices=[])
    rng.__enter__()
    torch.manual_seed(seed)
    return rng


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
    rng = _seeded(seed)
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


def build_tiny_qwen_image_edit_plus(seed: int = 0):
    """QwenImageEditPlusPipeline (recipe D): 2-layer transformer (hidden 48, 16 packed channels),
    VAE scale 4 with z_dim 4, 2-layer Qwen2.5-VL text encoder (hidden 16, 2-layer vision tower).
    64 px -> 64 tokens x 16. Scheduler shaped like Qwen-Image's (dynamic exponential shift)."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    tok = tiny_tokenizer()
    processor = tiny_processor(tok)
    tid = {k: tok.convert_tokens_to_ids(v) for k, v in dict(
        image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>").items()}
    rng = _seeded(seed)
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


def load_pretrained(family: str, path: str | os.PathLike, dtype: torch.dtype):
    """Load a pipeline from a local directory (``local_files_only``; never downloads).

    Raises PolicyLoadError when the directory is missing or lacks ``model_index.json``.
    """
    p = Path(path) if path else None
    if p is None or not p.is_dir():
        raise PolicyLoadError(f"pretrained {family} pipeline directory not found: {path!r}")
    if not (p / "model_index.json").is_file():
        raise PolicyLoadError(f"{p} is not a diffusers pipeline directory (no model_index.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if family == "flux2-klein":
        from diffusers import Flux2KleinPipeline as cls
    elif family == "qwen-image-edit-plus":
        from diffusers import QwenImageEditPlusPipeline as cls
    else:
        raise PolicyLoadError(f"unknown policy family {family!r}")
    try:
        return cls.from_pretrained(str(p), torch_dtype=dtype, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - surface one clear error naming the path
        raise PolicyLoadError(f"cannot load {family} pipeline from {p}: {type(e).__name__}: {e}") from e


# --- "small" profile: a tiny Flux2Klein that can learn the synthetic composition task (docs/measurements.md §8) ---

# whole words of the synthetic task's prompts (common/synthetic/prompts.py + subject names); anything
# else maps to [UNK]. Lower-cased by the tokenizer's normaliser.
_SMALL_WORDS = """a adopts aesthetics against an and artistic as at backdrop background blue body bottom center
circle cross cyan diamond dotted everything follow from generated green image in is left light lighting like
magenta make matching of orange overall place pose position purple put red reference render resemble
resembling right ring scene semicircle set should shown sits skeleton square star striped style
stylistically takes the top triangle use visual white with yellow user assistant system""".split()
SMALL_FLUX_OUT_LAYERS = (1,)


def small_word_tokenizer():
    """Word-level tokenizer (task words, digits, punctuation, Qwen specials) so a 6-reference prompt
    fits ~100 tokens instead of ~400 bytes; same chat template as :func:`tiny_tokenizer`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(_SPECIALS + sorted(set(_SMALL_WORDS)) + list("0123456789.,()'-:;!?")
                                        + ["[UNK]"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": _SPECIALS[1:]})
    # the chat template of tiny_tokenizer (building that byte tokenizer just to copy it costs ~2 s)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


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
    rng = _seeded(seed)
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
