"""`dyref chaos run|list|soak`: the fault scenarios on the local stack and the soak mode.

    dyref chaos list                     the scenarios (and which run in CI)
    dyref chaos run                      every scenario, then the table scenario -> outcome -> lost/duplicated
    dyref chaos run -s generator-kill    some of them (repeat -s)
    dyref chaos run --ci                 only the ones CI runs
    dyref chaos soak --minutes 30        continuous tiny training + /generate load, RSS and Redis memory
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["chaos_app", "render_table"]

chaos_app = typer.Typer(help="Fault injection on the local stack: a table of lost / duplicated groups per fault.",
                        no_args_is_help=True)
console = Console(width=220)


def render_table(outcomes) -> Table:
    t = Table(title="DyRef chaos: every admitted task accounted for exactly once")
    for col, just in (("scenario", "left"), ("result", "left"), ("lost", "right"), ("duplicated", "right"),
                      ("admitted", "right"), ("consumed", "right"), ("stale", "right"), ("dead", "right"),
                      ("in_flight", "right"), ("redelivered", "right"), ("s", "right"), ("outcome", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for o in outcomes:
        row = o.row()
        t.add_row(row["scenario"], ("[green]" if o.ok else "[red]") + row["result"], str(row["lost"]),
                  str(row["duplicated"]), *(str(row[k]) for k in ("admitted", "consumed", "stale", "dead", "in_flight",
                                                                 "redelivered", "seconds")), row["outcome"])
    return t


@chaos_app.command("list")
def list_scenarios():
    """The scenarios, whether CI runs them, and what they do."""
    from dyref.chaos.scenarios import SCENARIOS
    for name, (_fn, ci, what) in SCENARIOS.items():
        console.print(f"{name:24s} {'ci ' if ci else 'slow'}  {what}")


@chaos_app.command("run")
def run(scenario: list[str] = typer.Option([], "--scenario", "-s", help="Scenario name (repeatable); default: all."),
        ci: bool = typer.Option(False, "--ci", help="Only the scenarios CI runs."),
        workdir: Optional[str] = typer.Option(None, help="Scratch folder (Redis data, checkpoints); default: a temp dir."),
        as_json: Optional[str] = typer.Option(None, "--json", help="Also write the rows (with checks) to this file.")):
    """Run scenarios on a private Redis and a loopback Ray; exit 1 if any lost or double-counted a group."""
    from common.config import RayConfig
    from common.transport import EmbeddedRedis
    from dyref.chaos.scenarios import SCENARIOS, run_scenario
    from dyref.local import init_ray
    logging.basicConfig(level=logging.WARNING)
    names = scenario or [n for n, (_f, in_ci, _w) in SCENARIOS.items() if in_ci or not ci]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {unknown}; see `dyref chaos list`")
    work = Path(workdir or tempfile.mkdtemp(prefix="dyref-chaos-"))
    init_ray(RayConfig(num_cpus=3, object_store_memory_mb=128))
    outcomes = []
    with EmbeddedRedis(data_dir=work / "redis-shared", maxmemory_mb=512) as shared:
        for n in names:
            console.print(f"[bold]{n}[/bold] ...")
            o = run_scenario(n, work, shared.url)
            console.print(f"  {'PASS' if o.ok else 'FAIL'} in {o.seconds:.0f}s: {o.outcome}")
            outcomes.append(o)
    console.print(render_table(outcomes))
    if as_json:
        Path(as_json).write_text(json.dumps([o.row() | {"checks": o.checks, "audit": o.audit} for o in outcomes],
                                            indent=2, default=str))
    import ray
    from ray import serve
    serve.shutdown()
    ray.shutdown()
    raise typer.Exit(0 if all(o.ok for o in outcomes) else 1)


@chaos_app.command("soak")
def soak(minutes: float = typer.Option(30.0, help="How long to run."),
         generate: bool = typer.Option(True, help="Also put /generate load on the gateway."),
         workdir: Optional[str] = typer.Option(None, help="Scratch folder; default: a temp dir."),
         sample_s: float = typer.Option(60.0, help="Seconds between memory samples.")):
    """Continuous tiny training (+ /generate load); prints start/end RSS of every process and Redis memory."""
    from dyref.chaos.soak import run_soak
    logging.basicConfig(level=logging.WARNING)
    report = run_soak(minutes, Path(workdir or tempfile.mkdtemp(prefix="dyref-soak-")), generate=generate,
                      sample_s=sample_s, log=console.print)
    t = Table(title=f"soak: {report['minutes']:.1f} min, {report['steps']} learner steps, "
                    f"{report['requests']} /generate requests")
    for c in ("process", "pid", "start RSS MiB", "end RSS MiB", "growth MiB"):
        t.add_column(c, justify="left" if c == "process" else "right")
    for p in report["processes"]:
        t.add_row(p["name"], str(p["pid"]), f"{p['start_mb']:.0f}", f"{p['end_mb']:.0f}",
                  f"{p['end_mb'] - p['start_mb']:+.0f}")
    console.print(t)
    console.print_json(json.dumps({k: v for k, v in report.items() if k != "processes"}, default=str))
    raise typer.Exit(0 if report["ok"] else 1)
