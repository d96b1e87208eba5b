"""``dyref bench``: run, score and report OmniRef-Bench (or a synthetic one) for any policy.

Mounted by dyref/cli.py as ``app.add_typer(bench_app, name="bench")``::

    dyref bench stats METADATA
    dyref bench synthetic --out DIR --n 12
    dyref bench run --metadata M --image-root R [--policy local | --gateway URL] --out O --run-name N [--limit K]
    dyref bench report RUN_DIR [--compare OTHER_RUN_DIR]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from common.bench.loader import BenchDataError, load_cases, metadata_stats
from common.bench.report import write_report
from common.bench.runner import GatewayGenerator, GenerationSettings, Generator, PolicyGenerator, run_generation

__all__ = ["bench_app", "run_bench", "settings_from_policy"]

bench_app = typer.Typer(help="OmniRef-Bench: generate, score and report by category and reference count.",
                        no_args_is_help=True)
console = Console(stderr=True)


def settings_from_policy(policy_cfg, seed: int) -> GenerationSettings:
    """Evaluation sampling: the policy's eval steps, size and guidance, one fixed bench seed."""
    return GenerationSettings(seed=seed, width=policy_cfg.width, height=policy_cfg.height,
                              num_inference_steps=policy_cfg.eval_inference_steps,
                              guidance_scale=policy_cfg.guidance_scale)


def run_bench(bench_cfg, settings: GenerationSettings, generator: Generator, *, metadata: str | os.PathLike,
              image_root: str | os.PathLike, out: str | os.PathLike, run_name: str, limit: int | None = None,
              score: bool = True, progress: bool = True, force: bool = False, pose_model=None,
              judge_client=None) -> dict:
    """Generate (resumable) -> score (resumable) -> report. Returns a summary dict with the
    generation counts, the report paths and the run directory."""
    from common.bench.backends import build_scorers
    from common.bench.scoring import score_run
    from common.bench.synthetic import synthetic_placement_scorer

    cases = load_cases(metadata).subset(limit)
    run_dir = Path(out) / run_name
    gen = run_generation(cases, generator, image_root, run_dir, settings, progress=progress, allow_mismatch=force,
                         extra_manifest={"metadata": str(metadata)})
    result = {"run_dir": str(run_dir), "generated": len(gen.generated), "skipped": len(gen.skipped),
              "failed": gen.failed}
    if score:
        scorers = build_scorers(bench_cfg, pose_model=pose_model, placement=synthetic_placement_scorer(list(cases)),
                                judge_client=judge_client)
        no_judge = [] if any(s.name == "judge" for s in scorers) else ["judge: not evaluated (no judge configured)"]
        sc = score_run(run_dir, cases, scorers, image_root, progress=progress, extra_notes=no_judge)
        rep = write_report(run_dir)
        result.update(scored=len(sc["scored"]), reused_scores=len(sc["reused"]), report=str(rep["markdown"]),
                      plots=[str(p) for p in rep["plots"]])
    return result


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


@bench_app.command("stats")
def stats_cmd(metadata: Path = typer.Argument(..., help="Metadata json or training-record jsonl.")) -> None:
    """Case counts by reference count, category, role (the shipped files: 396 cases)."""
    try:
        typer.echo(json.dumps(metadata_stats(load_cases(metadata)), indent=2))
    except BenchDataError as e:
        _fail(str(e))


@bench_app.command("synthetic")
def synthetic_cmd(out: Path = typer.Option(..., "--out", help="Folder to write the benchmark into."),
                  n: int = typer.Option(12, "--n", min=1, help="Number of cases."),
                  seed: int = typer.Option(0, help="Seed of the procedural cases."),
                  size: int = typer.Option(64, help="Image side in pixels.")) -> None:
    """Build a small procedural benchmark offline in the official layout (metadata.json + images)."""
    from common.bench.synthetic import build_synthetic_bench
    meta = build_synthetic_bench(out, n, seed, size)
    typer.echo(json.dumps({"metadata": str(meta), "image_root": str(Path(out) / "images"),
                           "stats": metadata_stats(load_cases(meta))}, indent=2))


@bench_app.command("run")
def run_cmd(config: Optional[str] = typer.Option(None, "--config", "-c", help="Profile name or YAML path."),
            metadata: Optional[str] = typer.Option(None, help="Metadata json/jsonl (default bench.metadata)."),
            image_root: Optional[str] = typer.Option(None, "--image-root", help="Image folder (default bench.image_root)."),
            policy: str = typer.Option("local", help="'local': build the configured policy in this process."),
            gateway: Optional[str] = typer.Option(None, help="Base URL of a running gateway (instead of --policy)."),
            out: Optional[str] = typer.Option(None, help="Output folder (default bench.output_dir)."),
            run_name: str = typer.Option("run", "--run-name", help="Sub-folder of this run."),
            limit: Optional[int] = typer.Option(None, min=1, help="Only the first N cases."),
            no_score: bool = typer.Option(False, "--no-score", help="Generate only."),
            force: bool = typer.Option(False, help="Resume a run dir made with other settings.")) -> None:
    """Generate every case with the bench seed (skipping finished ones), score, and write the report."""
    from common.config import ConfigError, load_config
    try:
        cfg = load_config(config)
    except ConfigError as e:
        _fail(str(e))
    b = cfg.bench
    metadata, image_root, out = metadata or b.metadata, image_root or b.image_root, out or b.output_dir
    if not metadata or not image_root:
        _fail("--metadata and --image-root (or bench.metadata / bench.image_root) are required")
    if gateway:
        generator: Generator = GatewayGenerator(gateway, api_key=os.environ.get("DYREF_API_KEY"))
    elif policy == "local":
        from common.policy import build_policy
        generator = PolicyGenerator(build_policy(cfg.policy), label=f"{cfg.policy.family}/{cfg.policy.source}")
    else:
        _fail(f"--policy must be 'local' (or pass --gateway URL), got {policy!r}")
    try:
        res = run_bench(b, settings_from_policy(cfg.policy, b.seed), generator, metadata=metadata,
                        image_root=image_root, out=out, run_name=run_name, limit=limit, score=not no_score,
                        force=force)
    except (BenchDataError, FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(json.dumps(res, indent=2))


@bench_app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A scored run directory."),
               compare: Optional[Path] = typer.Option(None, help="Another run dir to compare against (A = it, B = RUN_DIR)."),
               out: Optional[Path] = typer.Option(None, help="Report folder (default RUN_DIR/report).")) -> None:
    """(Re)write report.json, report.md and plots; with --compare, side-by-side deltas."""
    try:
        rep = write_report(run_dir, compare, out)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(rep["markdown"].read_text())
