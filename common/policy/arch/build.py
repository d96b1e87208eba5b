"""Real-architecture pipelines with random weights, built directly on the target device.

Throughput, memory and weight-sync cost depend on the architecture and the shapes, not on the
weight values, so the public configs shipped beside this file (see README.md for the source of
every number) give honest timings without downloading a checkpoint.

Construction never materialises the weights on the CPU: parameters are created on the meta device
(accelerate ``init_empty_weights(include_buffers=False)``: buffers such as RoPE ``inv_freq`` and
the Flux2 VAE batch-norm statistics keep their real, computed values), cast to the target dtype
while still on meta, then ``to_empty(device)`` allocates them once on the device, where they are
filled with seeded random values (:func:`init_random_`).

The tokenizer is the tiny byte-level one of :mod:`common.policy.tiny` (no vocabulary download).
Embedding tables keep the real vocabulary size, so parameter count and memory are exact; only the
number of text tokens a prompt becomes differs (bytes instead of BPE merges). Qwen: the prompt
template adds about 250 more text tokens than the real tokenizer would (a few % of a 512 px,
4-reference sequence; the check reports the real sequence lengths it ran). Flux2-klein pads the
prompt to ``max_sequence_length`` either way, so its sequence length is exact.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

__all__ = ["ARCHES", "ArchError", "load_arch", "build_random_pipeline", "build_random_policy", "init_random_",
           "param_counts"]

_HERE = Path(__file__).resolve().parent
# name -> (config folder, policy family)
ARCHES: dict[str, tuple[str, str]] = {
    "qwen-image-edit-2511": ("qwen_image_edit_2511", "qwen-image-edit-plus"),
    "flux2-klein-9b": ("flux2_klein_9b", "flux2-klein"),
    "flux2-klein-4b": ("flux2_klein_4b", "flux2-klein"),
}
_COMPONENTS = ("transformer", "vae", "text_encoder", "scheduler")


class ArchError(ValueError):
    """Unknown architecture name or an unreadable shipped config."""


def load_arch(name: str, overrides: dict[str, dict] | None = None) -> dict[str, dict]:
    """The shipped configs of ``name``: {component: config dict} (keys starting with ``_`` kept).

    ``overrides`` ({component: {key: value}}) replaces top-level keys (``text_config`` /
    ``vision_config`` dicts are merged one level deep); tests use it to shrink depth.
    """
    if name not in ARCHES:
        raise ArchError(f"unknown architecture {name!r}; expected one of {', '.join(ARCHES)}")
    folder = _HERE / ARCHES[name][0]
    out = {}
    for comp in _COMPONENTS:
        p = folder / f"{comp}.json"
        try:
            out[comp] = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArchError(f"{p}: cannot read the shipped {comp} config: {e}") from e
    for comp, upd in (overrides or {}).items():
        if comp not in out:
            raise ArchError(f"override for unknown component {comp!r}; expected one of {', '.join(_COMPONENTS)}")
        for k, v in upd.items():
            if isinstance(v, dict) and isinstance(out[comp].get(k), dict):
                out[comp][k] = {**out[comp][k], **v}
            else:
                out[comp][k] = v
    return out


def _public(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter in place: matrices/kernels ~ N(0, 1/fan_in) (activations keep their
    scale through the depth, so bf16 stays finite), 1-d weights (norm scales) = 1, biases = 0.
    Seeded per parameter name, so the values do not depend on the device's RNG state."""
    for i, (name, p) in enumerate(module.named_parameters()):
        if p.device.type == "meta":
            continue
        if name.endswith("bias"):
            p.zero_()
        elif p.ndim < 2:
            p.fill_(1.0)
        else:
            fan_in = math.prod(p.shape[1:])
            gen = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + i)
            p.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)), generator=gen)
    return module


def _materialise(make, device, dtype, seed: int):
    """Build with meta parameters (real buffers), cast on meta, allocate once on ``device``, init."""
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):
        m = make()
    # keep the buffers' computed values (and dtypes: RoPE frequencies stay fp32 as loading keeps them)
    bufs = {n: b.detach().clone() for n, b in m.named_buffers()}
    if getattr(getattr(m, "config", None), "tie_word_embeddings", False) and hasattr(m, "tie_weights"):
        m.tie_weights()  # Qwen3-4B shares input and output embeddings
    # on meta this cast is free, so the device allocation below is already in dtype (plain Module.to:
    # diffusers' override only warns about fp32-kept modules, which these models have none of)
    torch.nn.Module.to(m, dtype=dtype)
    if torch.device(device).type != "meta":
        m.to_empty(device=device)
        init_random_(m, seed)
        for n, b in bufs.items():
            mod_name, _, attr = n.rpartition(".")
            mod = m.get_submodule(mod_name) if mod_name else m
            mod._buffers[attr] = b.to(device)
    return m.eval().requires_grad_(False)


def build_random_pipeline(arch: str, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                          seed: int = 0, overrides: dict[str, dict] | None = None):
    """A diffusers pipeline (the ``pipeline_class`` of the arch's family) of the real
    architecture ``arch`` with random ``dtype`` weights allocated directly on ``device``.

    ``device="meta"`` builds without allocating anything (parameter counting on any machine).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from common.policy import families
    from common.policy.tiny import tiny_tokenizer
    cfgs = {comp: _public(c) for comp, c in load_arch(arch, overrides).items()}
    sched = FlowMatchEulerDiscreteScheduler.from_config(cfgs["scheduler"])
    # transformer, VAE, text encoder: seed, seed + 1, seed + 2
    return families.get(ARCHES[arch][1]).random_pipeline(
        cfgs, tiny_tokenizer(), sched, lambda build, offset: _materialise(build, device, dtype, seed + offset))


def build_random_policy(pcfg, arch: str, overrides: dict[str, dict] | None = None):
    """An :class:`~common.policy.MRIGPolicy` on :func:`build_random_pipeline` (device and dtype from
    ``pcfg``; ``pcfg.family`` must be the arch's family). LoRA targets default to the family's
    (docs/algorithm.md §9) without the tiny-profile extras."""
    from common.policy import _DTYPES, MRIGPolicy, families
    from common.policy.lora import make_lora_config
    if ARCHES.get(arch, (None, None))[1] != pcfg.family:
        raise ArchError(f"architecture {arch!r} is not of policy family {pcfg.family!r}")
    fam = families.get(pcfg.family)
    pipe = build_random_pipeline(arch, pcfg.device, _DTYPES[pcfg.dtype], pcfg.seed, overrides)
    pipe.set_progress_bar_config(disable=True)
    lora = None
    if pcfg.finetune == "lora":
        targets = pcfg.lora.targets or fam.lora_targets("pretrained")
        lora = make_lora_config(pcfg.lora.rank, pcfg.lora.alpha, targets)
    return MRIGPolicy(pcfg, pipe, fam(pipe), lora_config=lora)


def param_counts(pipe) -> dict[str, int]:
    """{component: number of parameters} of a pipeline (works on meta-built pipelines)."""
    return {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("transformer", "text_encoder", "vae")}
