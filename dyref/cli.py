"""The `dyref` command line: one entry point for every service and job."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
import yaml
from rich.console import Console

from dyref.options import ProfileOpt, load_profile

app = typer.Typer(help="DyRef: multi-reference image generation, SFT + online RL with DAR and DRS.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect the configuration tree.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()

@config_app.command("show")
def config_show(profile: Optional[str] = ProfileOpt,
                section: Optional[str] = typer.Option(None, "--section", "-s", help="Only this section, e.g. rl or rl.dar."),
                as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML.")):
    """Print the resolved configuration (profile + DYREF_* overrides)."""
    data = load_profile(profile).model_dump(mode="json")
    for part in (section.split(".") if section else []):
        if not isinstance(data, dict) or part not in data:
            console.print(f"[red]no section {section!r}[/red]")
            raise typer.Exit(2)
        data = data[part]
    sys.stdout.write(json.dumps(data, indent=2) + "\n" if as_json else yaml.safe_dump(data, sort_keys=False))


@app.command()
def up(profile: Optional[str] = ProfileOpt,
       hold: bool = typer.Option(False, help="Keep the stack running until Ctrl-C."),
       ray: bool = typer.Option(True, help="Start a local Ray as well as Redis.")):
    """Bring up the local stack (Redis, embedded if none answers; Ray) and print its health."""
    from dyref.local import local_stack
    cfg = load_profile(profile)
    with local_stack(cfg, with_ray=ray) as stack:
        health = stack.health()
        console.print_json(json.dumps(health))
        ok = all(v.get("ok") for v in health.values())
        if hold and ok:
            console.print("stack is up; Ctrl-C stops it")
            try:
                import time
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    raise typer.Exit(0 if ok else 1)


@app.command()
def demo(profile: Optional[str] = ProfileOpt,
         out: str = typer.Option("runs/demo", help="Output folder; a second run reuses the finished stages found here."),
         quick: bool = typer.Option(False, help="A minute-long smoke run of the same pipeline (tiny sizes)."),
         seed: int = typer.Option(0, help="Seed of the data, the models and the training order."),
         serve_seconds: float = typer.Option(-1, help="Serve /generate this long after the report (-1: until Ctrl-C, 0: not at all)."),
         port: int = typer.Option(8000, help="Port of the /generate gateway.")):
    """The main job: tiny policy -> SFT -> RL (DAR + DRS, distributed) -> held-out report -> /generate."""
    from dyref.demo_cli import run_demo_command
    run_demo_command(load_profile(profile), out, quick, serve_seconds, port, seed=seed)


@app.command("demo-ablation")
def demo_ablation(profile: Optional[str] = ProfileOpt,
                  out: str = typer.Option("runs/ablation", help="Output folder (one SFT per seed is trained or reused here)."),
                  quick: bool = typer.Option(False, help="Tiny sizes: a smoke run of the same path."),
                  seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
                  variants: str = typer.Option("grpo,gdpo,gdpo+drs,gdpo+dar,gdpo+drs+dar,shuffled",
                                               help="Comma-separated variants (see dyref.demo.ABLATION_VARIANTS)."),
                  rl_steps: Optional[int] = typer.Option(None, min=1, help="Learner steps of every variant (the same budget for all; default: the demo's).")):
    """RL variants (GRPO, GDPO, +DRS, +DAR, +both, shuffled-advantage control) from the same SFT weights, several
    seeds; paired per-case differences against GDPO by reference count."""
    from dyref.demo_cli import run_ablation_command
    run_ablation_command(load_profile(profile), out, quick, [int(s) for s in seeds.split(",")], variants.split(","), rl_steps)


# Every sub-command group is mounted explicitly: a module that fails to import (a missing dependency,
# a bug) stops the command line with its error instead of silently removing its commands. Heavy
# imports (torch, Ray) stay inside the commands, so `dyref --help` is quick.
from common.bench.cli import bench_app  # noqa: E402
from common.policy.cli import adapter_app  # noqa: E402
from dyref.chaos.cli import chaos_app  # noqa: E402
from dyref.cluster import cluster_app  # noqa: E402
from dyref.gateway_commands import gateway_app, generate  # noqa: E402
from dyref.service_commands import register as _register_services  # noqa: E402
from dyref.train_commands import train_app  # noqa: E402

for _sub, _name in ((bench_app, "bench"), (train_app, "train"), (adapter_app, "adapter"), (gateway_app, "gateway"),
                    (cluster_app, "cluster"), (chaos_app, "chaos")):
    app.add_typer(_sub, name=_name)
_register_services(app)
app.command("generate", help="Generate images through a running gateway (same as `dyref gateway generate`).")(generate)

if __name__ == "__main__":
    app()
