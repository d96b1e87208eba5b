"""`dyref adapter import|export`: the paper's DiffSynth LoRA files <-> PEFT adapter directories."""
from __future__ import annotations

import json

import typer

from common.policy.lora import AdapterError

__all__ = ["adapter_app"]

adapter_app = typer.Typer(help="Convert LoRA adapters: DiffSynth safetensors (paper) <-> PEFT directory (DyRef).",
                          no_args_is_help=True)


@adapter_app.command("import")
def import_(src: str = typer.Argument(..., help="DiffSynth-style LoRA .safetensors (the paper's SFT output)."),
            out_dir: str = typer.Argument(..., help="PEFT adapter directory to write (policy.lora.init_adapter)."),
            prefix: str = typer.Option("transformer", help="Key prefix to strip ('' for none)."),
            verify: bool = typer.Option(True, help="Check the round trip is bit-exact.")):
    """d2p: DiffSynth keys -> adapter_config.json + adapter_model.safetensors (r from lora_A, alpha = r)."""
    from common.policy.convert import diffsynth_to_peft
    from common.policy.lora import read_adapter_dir
    try:
        p = diffsynth_to_peft(src, out_dir, prefix=prefix, verify=verify)
    except AdapterError as e:
        raise typer.BadParameter(str(e)) from None
    cfg, sd = read_adapter_dir(p)
    typer.echo(json.dumps({"adapter": str(p), "r": cfg.r, "lora_alpha": cfg.lora_alpha, "tensors": len(sd),
                           "modules": len(cfg.target_modules), "verified": verify}))


@adapter_app.command("export")
def export(src_dir: str = typer.Argument(..., help="PEFT adapter directory (e.g. runs/sft/adapter)."),
           out_file: str = typer.Argument(..., help="DiffSynth-style .safetensors to write."),
           prefix: str = typer.Option("", help="Key prefix to add ('' for DiffSynth load_lora)."),
           adapter: str = typer.Option("default", help="Adapter name inserted in the keys."),
           verify: bool = typer.Option(True, help="Check the round trip is bit-exact.")):
    """p2d: PEFT adapter directory -> one safetensors with '<prefix>.<module>.lora_A.<adapter>.weight' keys."""
    from common.policy.convert import peft_to_diffsynth
    try:
        p = peft_to_diffsynth(src_dir, out_file, prefix=prefix, adapter=adapter, verify=verify)
    except AdapterError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(json.dumps({"file": str(p), "verified": verify}))
