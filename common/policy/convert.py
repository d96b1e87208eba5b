"""The paper's adapter format (DiffSynth-style LoRA safetensors) <-> PEFT adapter directories.

Same semantics as the paper's ``sft/all_scripts/diffusers_peft_transfer.py`` (docs/algorithm.md §10):

- **d2p** (import): strip ``<prefix>.``, rewrite ``.lora_A.<adapter>.weight`` -> ``.lora_A.weight``
  (same for B), prepend ``base_model.model.``; adapter_config.json with r = lora_A.shape[0],
  lora_alpha = r (scale 1, DiffSynth's alpha = rank), target_modules = the explicit list of full
  module paths, dropout 0, inference_mode true.
- **p2d** (export): the inverse: ``base_model.model.`` off, ``.<adapter>`` added, ``<prefix>.`` added
  (``prefix=""`` for DiffSynth ``load_lora``; the paper imports with ``prefix="transformer"``).

With ``verify`` the opposite mapping is applied to the result and every tensor must come back
bit-identical (same keys, dtype, values). DiffSynth has no alpha: exporting an adapter whose scale
alpha/r (rslora: alpha/sqrt(r)) is not 1 folds the scale into lora_B, so the exported file computes
the same function (import then gives alpha = r; the tensors are not bit-identical to the source).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from common.policy.lora import ADAPTER, AdapterError, read_adapter_dir

__all__ = ["d2p_state", "p2d_state", "diffsynth_to_peft", "peft_to_diffsynth", "adapter_scale"]

_PEFT = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def _split(key: str) -> tuple[str, str, str | None]:
    m = _KEY.match(key)
    if m is None:
        raise AdapterError(f"not a LoRA weight key (expected '<module>.lora_A|lora_B[.<adapter>].weight'): {key!r}")
    return m["module"], m["ab"], m["adapter"]


def d2p_state(sd: dict[str, torch.Tensor], prefix: str = "transformer") -> tuple[dict[str, torch.Tensor], dict]:
    """DiffSynth keys -> (PEFT keys ``base_model.model.<module>.lora_A.weight``, adapter_config fields)."""
    if not sd:
        raise AdapterError("empty LoRA state")
    pre = f"{prefix}." if prefix else ""
    out: dict[str, torch.Tensor] = {}
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if pre and not k.startswith(pre):
            raise AdapterError(f"key {k!r} lacks the prefix {pre!r} (pass --prefix '' for unprefixed files)")
        module, ab, _ = _split(k[len(pre):])
        new = f"{_PEFT}{module}.{ab}.weight"
        if new in out:
            raise AdapterError(f"two weights map to {new} (several adapters in one file?)")
        out[new] = v
        modules.setdefault(module, {})[ab] = v
    ranks = set()
    for m, ab in modules.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterError(f"module {m} has {sorted(ab)}; a LoRA needs both lora_A and lora_B")
        if ab["lora_A"].shape[0] != ab["lora_B"].shape[1]:
            raise AdapterError(f"module {m}: lora_A {tuple(ab['lora_A'].shape)} and lora_B "
                               f"{tuple(ab['lora_B'].shape)} disagree on the rank")
        ranks.add(int(ab["lora_A"].shape[0]))
    if len(ranks) != 1:
        raise AdapterError(f"modules have different ranks {sorted(ranks)}; one rank per adapter is supported")
    r = ranks.pop()
    config = {"r": r, "lora_alpha": r, "target_modules": sorted(modules), "lora_dropout": 0.0,
              "inference_mode": True}
    return out, config


def p2d_state(sd: dict[str, torch.Tensor], prefix: str = "", adapter: str | None = ADAPTER,
              scale: float = 1.0) -> dict[str, torch.Tensor]:
    """PEFT keys -> DiffSynth keys ``<prefix>.<module>.lora_A.<adapter>.weight``; ``scale`` != 1 is
    folded into lora_B (DiffSynth applies B·A with scale 1). ``adapter=None``: no adapter segment."""
    if not sd:
        raise AdapterError("empty LoRA state")
    pre = f"{prefix}." if prefix else ""
    out = {}
    for k, v in sd.items():
        if not k.startswith(_PEFT):
            raise AdapterError(f"PEFT key {k!r} does not start with {_PEFT!r}")
        module, ab, name = _split(k[len(_PEFT):])
        if name is not None:
            raise AdapterError(f"PEFT key {k!r} already carries an adapter name")
        if ab == "lora_B" and scale != 1.0:
            v = (v.float() * scale).to(v.dtype)
        out[f"{pre}{module}.{ab}.{adapter}.weight" if adapter else f"{pre}{module}.{ab}.weight"] = v
    return out


def adapter_scale(lora_config) -> float:
    """The factor PEFT multiplies B·A by: alpha / r (rslora: alpha / sqrt(r))."""
    r, a = float(lora_config.r), float(lora_config.lora_alpha)
    return a / r ** 0.5 if getattr(lora_config, "use_rslora", False) else a / r


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    if a.keys() != b.keys():
        raise AdapterError(f"{what}: round trip changed the keys ({len(set(a) ^ set(b))} differ)")
    for k in a:
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
            raise AdapterError(f"{what}: round trip changed tensor {k}")


def diffsynth_to_peft(src: str | Path | dict, out_dir: str | Path, prefix: str = "transformer",
                      verify: bool = True) -> Path:
    """Import: a DiffSynth LoRA safetensors (path or state dict) -> PEFT adapter directory ``out_dir``."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file
    sd = src if isinstance(src, dict) else _load(src, load_file)
    peft_sd, fields = d2p_state(sd, prefix)
    if verify:
        _same(sd, p2d_state(peft_sd, prefix, adapter=_adapter_name(sd, prefix)), "d2p")
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in peft_sd.items()}, str(p / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    LoraConfig(**fields).save_pretrained(str(p))
    if verify:
        _, back = read_adapter_dir(p)
        _same(peft_sd, back, "d2p (written directory)")
    return p


def peft_to_diffsynth(src_dir: str | Path, out_file: str | Path, prefix: str = "", adapter: str = ADAPTER,
                      verify: bool = True) -> Path:
    """Export: a PEFT adapter directory -> one DiffSynth LoRA safetensors at ``out_file``."""
    from safetensors.torch import load_file, save_file
    cfg, sd = read_adapter_dir(src_dir)
    scale = adapter_scale(cfg)
    out = p2d_state(sd, prefix, adapter, scale=scale)
    if verify and scale == 1.0:
        back, _ = d2p_state(out, prefix)
        _same(sd, back, "p2d")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(out_file), metadata={"format": "pt"})
    if verify:
        _same(out, load_file(str(out_file)), "p2d (written file)")
    return out_file


def _adapter_name(sd: dict[str, torch.Tensor], prefix: str) -> str | None:
    """The one adapter name the DiffSynth keys carry (None: keys without one)."""
    pre = f"{prefix}." if prefix else ""
    names = {_split(k[len(pre):])[2] for k in sd}
    if len(names) > 1:
        raise AdapterError(f"several adapter names in one file: {sorted(map(str, names))}")
    return names.pop()


def _load(path, load_file) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise AdapterError(f"LoRA file not found: {p}")
    try:
        return load_file(str(p))
    except Exception as e:  # noqa: BLE001
        raise AdapterError(f"{p}: not a readable safetensors file: {e}") from None
