"""What every policy family provides, and the pieces they share.

A family is one diffusers pipeline family (FLUX.2-klein, Qwen-Image-Edit-Plus, ...). Its class,
a :class:`Family` subclass in its own module beside this one, says everything DyRef needs to know
about it: the diffusers pipeline class, the released LoRA targets, whether its text encoder can be
trained, how to build a tiny or a real-architecture pipeline, and the per-call glue on an instance
(conditioning, velocity, schedule, noise, decode). The registry (``common.policy.families``) finds
the class by name; no other library or service code branches on a family's name.

The glue reuses the pipeline's own methods (encode_prompt, prepare_image_latents / prepare_latents,
_pack_latents, _unpack_*), so the policy's denoising loop feeds the transformer exactly what
``pipeline.__call__`` feeds it (docs/algorithm.md §9). Latents are always the pipeline's packed
token layout x: [B, S, C] (S image tokens).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from PIL import Image

__all__ = ["Cond", "Family", "PolicyLoadError", "TINY_EXTRA_TARGETS", "to_pil"]

# Tiny profile only, every family: with the paper's targets a LoRA on the tiny random transformer
# barely moves a colour reward, which is reached fastest by a token-independent velocity shift that
# sits behind the last block's LayerNorm (docs/measurements.md §7: plateau at -.121 vs learning with
# these two added).
TINY_EXTRA_TARGETS = ("proj_out", "norm_out.linear")


class PolicyLoadError(ValueError):
    """A pretrained pipeline that is missing or unreadable at the configured path."""


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
    """One pipeline family. Class attributes and classmethods describe the family; an instance
    wraps one built pipeline and does the per-call work the policy asks of it."""

    name: ClassVar[str] = ""
    #: the diffusers class a pretrained pipeline directory is loaded with
    pipeline_class: ClassVar[str] = ""
    #: LoRA targets when ``policy.lora.targets`` is unset: the released adapter's (docs/algorithm.md §9)
    default_targets: ClassVar[tuple[str, ...]] = ()
    #: whether ``policy.train_text_encoder`` may train this family's text encoder
    trains_text_encoder: ClassVar[bool] = False
    #: the most prompt tokens the real model takes (real-architecture checks run at it)
    max_prompt_tokens: ClassVar[int] = 512

    # ---- the family ------------------------------------------------------------------------

    @classmethod
    def lora_targets(cls, source: str) -> list[str]:
        """Default LoRA targets of a policy built from ``source`` ("tiny" adds TINY_EXTRA_TARGETS)."""
        return list(cls.default_targets) + (list(TINY_EXTRA_TARGETS) if source == "tiny" else [])

    @classmethod
    def build_tiny(cls, seed: int, size: str = "tiny") -> tuple[Any, tuple[int, ...] | None]:
        """A seeded random pipeline built in code (``policy.source: tiny``) -> (pipeline,
        text-encoder layers to stack, or None for the family's default)."""
        raise NotImplementedError(f"policy family {cls.name} has no tiny pipeline")

    @classmethod
    def random_pipeline(cls, cfgs: dict[str, dict], tokenizer, scheduler,
                        make: Callable[[Callable[[], torch.nn.Module], int], torch.nn.Module]):
        """The real architecture with random weights (common/policy/arch): ``cfgs`` are the shipped
        component configs, ``make(build, seed_offset)`` materialises one module on the device."""
        raise NotImplementedError(f"policy family {cls.name} has no real-architecture builder")

    @classmethod
    def load_pretrained(cls, path: str | os.PathLike | None, dtype: torch.dtype):
        """Load ``pipeline_class`` from a local directory (``local_files_only``; never downloads).

        Raises PolicyLoadError when the directory is missing or lacks ``model_index.json``.
        """
        p = Path(path) if path else None
        if p is None or not p.is_dir():
            raise PolicyLoadError(f"pretrained {cls.name} pipeline directory not found: {path!r}")
        if not (p / "model_index.json").is_file():
            raise PolicyLoadError(f"{p} is not a diffusers pipeline directory (no model_index.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import diffusers
        pipeline = getattr(diffusers, cls.pipeline_class)
        try:
            return pipeline.from_pretrained(str(p), torch_dtype=dtype, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - surface one clear error naming the path
            raise PolicyLoadError(f"cannot load {cls.name} pipeline from {p}: {type(e).__name__}: {e}") from e

    # ---- one built pipeline ----------------------------------------------------------------

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
        """The schedule's dynamic shift, as the pipeline computes it."""
        raise NotImplementedError

    def encode(self, prompt: str, refs, height: int, width: int, cfg, device,
               negative_prompt: str | None = None) -> tuple[Cond, Cond | None]:
        """(cond, negative cond or None) of a prompt with its compiled references."""
        raise NotImplementedError

    def encode_target(self, image: Image.Image, height: int, width: int, device=None) -> torch.Tensor:
        """Clean latent x0 [1, S, C] of a training target, in the packed layout of :meth:`noise`."""
        raise NotImplementedError

    def noise(self, gen: torch.Generator, cond: Cond, dtype=torch.float32) -> torch.Tensor:
        """One member's initial noise [1, S, C]."""
        raise NotImplementedError

    def velocity(self, transformer, cond: Cond, x: torch.Tensor, sigma, text_encoder=None) -> torch.Tensor:
        """v [B, S, C] float32; ``text_encoder``: a trained one (only if ``trains_text_encoder``)."""
        raise NotImplementedError

    def guide(self, v_pos: torch.Tensor, v_neg: torch.Tensor, scale: float) -> torch.Tensor:
        """True classifier-free guidance as the pipeline combines the two velocities."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor, cond: Cond) -> np.ndarray:
        """x [B, S, C] -> uint8 [B, H, W, 3]."""
        raise NotImplementedError


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    # the same rounding as diffusers' numpy_to_pil, so images equal the pipeline's PIL output
    return (arr * 255).round().astype(np.uint8)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a) for a in images]
