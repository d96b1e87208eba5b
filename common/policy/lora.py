"""LoRA plumbing (peft): config, PEFT adapter directories in and out, strict key mapping.

A PEFT adapter directory is ``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` (what ``PeftModel.save_pretrained`` writes). Loading
also accepts keys prefixed ``transformer.`` / ``diffusion_model.`` (diffusers / other trainers)
and keys that already carry the adapter name. Loading is strict: every LoRA weight of the model
must be present with the same shape and nothing else may be in the file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

__all__ = ["AdapterError", "make_lora_config", "read_adapter_dir", "write_adapter_dir", "to_param_names",
           "ADAPTER", "REFERENCE_ADAPTER"]

ADAPTER = "default"            # the trained adapter
REFERENCE_ADAPTER = "reference"  # frozen snapshot of the starting adapter (KL reference, mode "sft")
_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.")


class AdapterError(ValueError):
    """An adapter directory or weight payload that does not match the policy's LoRA."""


def make_lora_config(rank: int, alpha: float, targets: list[str]):
    from peft import LoraConfig
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)


def read_adapter_dir(path: str | Path):
    """-> (peft.LoraConfig, {stripped key: tensor}). Raises AdapterError naming the missing file."""
    from peft import LoraConfig
    from safetensors.torch import load_file
    p = Path(path)
    cfg_p, w_p = p / "adapter_config.json", p / "adapter_model.safetensors"
    for f in (cfg_p, w_p):
        if not f.is_file():
            raise AdapterError(f"adapter directory {p}: missing {f.name}")
    try:
        raw = json.loads(cfg_p.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_p}: not valid JSON: {e}") from None
    if raw.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{cfg_p}: peft_type {raw.get('peft_type')!r} is not LORA")
    tm = raw.get("target_modules")
    if not tm:
        raise AdapterError(f"{cfg_p}: no target_modules")
    lcfg = LoraConfig(r=int(raw.get("r", 8)), lora_alpha=float(raw.get("lora_alpha", raw.get("r", 8))),
                      target_modules=tm if isinstance(tm, str) else list(tm), init_lora_weights=True,
                      use_rslora=bool(raw.get("use_rslora", False)))
    try:
        sd = load_file(str(w_p))
    except Exception as e:  # noqa: BLE001
        raise AdapterError(f"{w_p}: not a readable safetensors file: {e}") from None
    return lcfg, sd


def to_param_names(sd: dict[str, torch.Tensor], adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """Adapter-file keys -> the model's parameter names (``...lora_A.<adapter>.weight``)."""
    out = {}
    for k, v in sd.items():
        for pre in _PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
                break
        k = re.sub(r"\.(lora_[AB])\.(?:[^.]+\.)?weight$", rf".\1.{adapter}.weight", k)
        if k in out:
            raise AdapterError(f"duplicate adapter weight {k}")
        out[k] = v
    return out


def write_adapter_dir(path: str | Path, lora_config, state: dict[str, torch.Tensor], adapter: str = ADAPTER) -> Path:
    """Write a PEFT adapter directory from the model's LoRA params (names ``...lora_A.<adapter>.weight``)."""
    from safetensors.torch import save_file
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    tag = f".{adapter}.weight"
    sd = {"base_model.model." + k[: -len(tag)] + ".weight": v.detach().cpu().contiguous()
          for k, v in state.items() if k.endswith(tag)}
    save_file(sd, str(p / "adapter_model.safetensors"), metadata={"format": "pt"})
    lora_config.save_pretrained(str(p))  # peft's own adapter_config.json writer
    return p
