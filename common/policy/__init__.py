"""Multi-reference image-generation policies (FLUX.2-klein, Qwen-Image-Edit-Plus) on diffusers.

``build_policy(cfg.policy)`` is the one entry point; see :class:`MRIGPolicy` for the interface the
generators, learner, gateway and SFT use.
"""
from __future__ import annotations

import logging

import torch

from common.policy import families
from common.policy.families import Cond, PolicyLoadError, UnknownFamilyError
from common.policy.lora import AdapterError, make_lora_config, read_adapter_dir, to_param_names
from common.policy.policy import MRIGPolicy, SamplingError, TrainableStateError, mix_seed
from common.policy.references import (CompiledReferences, InvalidReferenceError, ReferenceError_,
                                      TooManyReferencesError, UnknownRoleError, compile_references)
from common.policy.rollout import GroupRollout, ScoredGroup, StepOutput

__all__ = ["build_policy", "MRIGPolicy", "GroupRollout", "ScoredGroup", "StepOutput", "Cond", "CompiledReferences",
           "compile_references", "default_lora_targets", "ReferenceError_", "TooManyReferencesError",
           "UnknownRoleError", "InvalidReferenceError", "TrainableStateError", "SamplingError", "AdapterError",
           "PolicyLoadError", "UnknownFamilyError", "mix_seed"]

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_lora_targets(family: str, source: str) -> list[str]:
    """The family's released defaults (docs/algorithm.md §9); the tiny profile adds proj_out +
    norm_out.linear (common/policy/families/base.py). An unknown family raises UnknownFamilyError."""
    return families.get(family).lora_targets(source)


def build_policy(cfg) -> MRIGPolicy:
    """Build the policy of a :class:`common.config.PolicyConfig`.

    tiny: random seeded pipeline built in code (no files, no network). pretrained: the pipeline at
    ``cfg.path`` (local only; PolicyLoadError if missing). LoRA starts from ``cfg.lora.init_adapter``
    when given; its adapter_config.json then decides rank, alpha and targets (as the paper's
    resume_path does), otherwise cfg.lora (targets None -> the family's, :func:`default_lora_targets`).
    """
    fam = families.get(cfg.family)
    dtype = _DTYPES[cfg.dtype]
    if cfg.source == "tiny":
        pipe, out_layers = fam.build_tiny(cfg.seed, getattr(cfg, "tiny_size", "tiny"))
    else:
        pipe, out_layers = fam.load_pretrained(cfg.path, dtype), None
    if cfg.source == "tiny" and dtype != torch.float32:
        pipe.to(dtype=dtype)  # pretrained pipelines are loaded in their dtype already
    if torch.device(cfg.device).type != "cpu":
        pipe.to(cfg.device)
    pipe.set_progress_bar_config(disable=True)
    family = fam(pipe, out_layers)
    lora_config, init_state = None, None
    if cfg.finetune == "lora":
        if cfg.lora.init_adapter:
            lora_config, sd = read_adapter_dir(cfg.lora.init_adapter)
            init_state = to_param_names(sd)
            log.info("LoRA from %s: r=%s alpha=%s targets=%s (adapter_config.json overrides cfg.lora)",
                     cfg.lora.init_adapter, lora_config.r, lora_config.lora_alpha, lora_config.target_modules)
        else:
            targets = cfg.lora.targets or fam.lora_targets(cfg.source)
            lora_config = make_lora_config(cfg.lora.rank, cfg.lora.alpha, targets)
    policy = MRIGPolicy(cfg, pipe, family, lora_config=lora_config, init_state=init_state)
    if getattr(cfg, "init_weights", None):
        from pathlib import Path
        path = Path(cfg.init_weights)
        if not path.is_file():
            raise PolicyLoadError(f"policy.init_weights: no file at {path}")
        policy.load_init_state(path.read_bytes())
        policy.reset_reference()
    return policy
