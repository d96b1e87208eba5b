"""What every `dyref` command shares: the --config option and loading the profile with a clear error."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from common.config import ConfigError, DyRefConfig, load_config

__all__ = ["ProfileOpt", "load_profile"]

ProfileOpt = typer.Option(None, "--config", "-c", help="Profile name in configs/ or a YAML path "
                          "(default: $DYREF_PROFILE or cpu-tiny).")


def load_profile(profile: Optional[str]) -> DyRefConfig:
    """The resolved configuration, or exit 2 with the error (it names the bad field)."""
    try:
        return load_config(profile)
    except ConfigError as e:
        Console().print(f"[red]{e}[/red]")
        raise typer.Exit(2)
