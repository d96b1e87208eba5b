"""`dyref train rl|sft` and the one-service-per-process commands used by compose and Kubernetes."""
from __future__ import annotations

import json
import logging
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

train_app = typer.Typer(help="Training stages: rl (online RL with DAR and DRS) and sft.", no_args_is_help=True)
console = Console()


def task_source_for(cfg, records: Optional[str], image_root: Optional[str], n_cases: int, seed: int):
    from services.learner.tasks import TaskSource, record_cases, synthetic_cases
    if records:
        if not image_root:
            raise typer.BadParameter("--image-root is required with --records")
        return TaskSource(record_cases(records, image_root), seed)
    return TaskSource(synthetic_cases(n_cases, seed, size=cfg.policy.height, ref_size=cfg.policy.reference_size,
                                      max_refs=min(6, cfg.policy.max_references)), seed)


@train_app.command("rl")
def train_rl(profile: Optional[str] = typer.Option(None, "--config", "-c", help="Profile name or YAML path."),
             steps: Optional[int] = typer.Option(None, help="Target total learner step, as max_steps: a resumed run "
                                                 "trains the rest (default: rl.total_steps)."),
             records: Optional[str] = typer.Option(None, help="Training records (jsonl, train format); default: the synthetic task."),
             image_root: Optional[str] = typer.Option(None, help="Folder the records' image paths are relative to."),
             cases: int = typer.Option(256, help="Synthetic training cases when no --records."),
             generators: Optional[int] = typer.Option(None, help="Generator actors (default: rl.num_generators).")):
    """Start everything on this machine (Redis, Ray, reward app, generators, learner) and train."""
    from dyref.options import load_profile
    from common.metrics import serve_metrics
    from dyref.launch import StopFlag, run_rl
    from dyref.local import local_stack
    logging.basicConfig(level=logging.WARNING)
    cfg = load_profile(profile)
    source = task_source_for(cfg, records, image_root, cases, cfg.rl.seed)
    stop = StopFlag()
    with local_stack(cfg) as stack, stop.on_signals():
        if cfg.metrics_port:
            serve_metrics(cfg.metrics_port)
        total = steps or cfg.rl.total_steps
        with Progress(TextColumn("[bold]rl"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=console) as bar:
            t = bar.add_task("rl", total=total, info="starting")

            def on_ready(recipe) -> None:  # resumed: the bar starts at the checkpoint's step
                if recipe.state.step:
                    bar.update(t, completed=min(total, recipe.state.step), info=f"resumed at step {recipe.state.step}")

            def on_step(s: dict) -> None:
                rw = " ".join(f"{k.split('/')[1]}={v:.4f}" for k, v in s.items() if k.startswith("reward/") and k.endswith("/mean"))
                bar.update(t, completed=min(total, s["step"]), info=f"v{s['version']} {rw} kl={s.get('losses/kl', 0):.2e}")
            eval_cases = None
            if not records and cfg.rl.eval_every:  # the evaluator scores a held-out synthetic split
                from common.synthetic import make_split
                eval_cases = make_split("eval", cfg.rl.eval_cases, cfg.rl.seed + 1, size=cfg.policy.height,
                                        ref_size=cfg.policy.reference_size, max_refs=min(6, cfg.policy.max_references))
            recipe, state, statuses = run_rl(cfg, stack.redis_url, source, steps=steps, stop=stop, on_step=on_step,
                                             generators=generators, eval_cases=eval_cases, on_ready=on_ready)
        console.print_json(json.dumps({"step": state.step, "version": state.version, "audit": recipe.audit(),
                                       "generators": statuses, "checkpoint": str(recipe.ckpt_dir)}))


@train_app.command("sft")
def train_sft(profile: Optional[str] = typer.Option(None, "--config", "-c", help="Profile name or YAML path."),
              steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: sft.steps)."),
              records: Optional[str] = typer.Option(None, help="Training records (jsonl, train format); default: the synthetic task."),
              image_root: Optional[str] = typer.Option(None, help="Folder the records' image paths are relative to."),
              cases: int = typer.Option(512, help="Synthetic training cases when no --records."),
              output_dir: Optional[str] = typer.Option(None, help="Output folder (default: sft.output_dir)."),
              resume: bool = typer.Option(True, help="Continue from output_dir/checkpoints when present."),
              threads: Optional[int] = typer.Option(None, help="torch CPU threads.")):
    """Stage 1: flow-matching SFT; writes <output_dir>/adapter (the RL stage's policy.lora.init_adapter)."""
    import torch

    from dyref.options import load_profile
    from services.learner.sft_recipe import SFTRecipe
    from services.learner.tasks import record_cases, synthetic_cases
    logging.basicConfig(level=logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    cfg = load_profile(profile)
    sft = cfg.sft.model_copy(update={"output_dir": output_dir}) if output_dir else cfg.sft
    if records:
        if not image_root:
            raise typer.BadParameter("--image-root is required with --records")
        data = record_cases(records, image_root)
    else:
        data = synthetic_cases(cases, sft.seed, size=cfg.policy.height, ref_size=cfg.policy.reference_size,
                               max_refs=min(6, cfg.policy.max_references))
    total = steps or sft.steps
    recipe = SFTRecipe(cfg.policy, sft, data).setup(resume=resume, total_steps=total)
    with Progress(TextColumn("[bold]sft"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console) as bar:
        t = bar.add_task("sft", total=total, completed=recipe.state.step, info="starting")

        def on_step(s: dict) -> None:
            bar.update(t, completed=s["step"], info=f"loss={s['losses/loss']:.4f} |g|={s['losses/grad_norm']:.3f} lr={s['losses/lr']:.2e} "
                                                    f"refs={s['data/n_refs'][0]}")
        state = recipe.train(total, on_step=on_step)
    console.print_json(json.dumps({"step": state.step, "output_dir": str(recipe.out),
                                   "adapter": str(recipe.adapter_dir) if recipe.policy.finetune == "lora" else None,
                                   "trainable": str(recipe.out / "trainable.safetensors"),
                                   "final_loss": state.history[-1]["losses/loss"] if state.history else None}))
