"""One service per process (what docker compose and Kubernetes run), plus `dyref audit`.

    dyref rewards    deploy the reward Serve app on the Ray cluster and stay up
    dyref generator  run N generator actors on the Ray cluster until stopped
    dyref learner    run the RL learner (needs Redis only, not Ray)
    dyref audit      print the accounting audit of a run from Redis
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
from dyref.options import ProfileOpt


@contextmanager
def _service(profile: Optional[str], ray: bool | Callable[[object], bool]):
    """One service's process: its config, Redis (embedded when none answers) and Ray (joined, or
    local), torn down on exit. SIGTERM/SIGINT set the returned stop flag: the service's loop ends
    between units of work, then :func:`dyref.local.local_stack` ends whatever this process started
    (its embedded Redis, a local Ray; never Serve on a shared cluster), as `dyref train rl` does."""
    from dyref.options import load_profile
    from common.metrics import serve_metrics
    from dyref.launch import StopFlag
    from dyref.local import local_stack
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_profile(profile)
    if callable(ray):  # whether this service needs Ray depends on its config
        ray = ray(cfg)
    if cfg.metrics_port:
        serve_metrics(cfg.metrics_port, addr=cfg.metrics_host)
    stop = StopFlag()
    with local_stack(cfg, with_ray=ray) as stack, stop.on_signals():
        yield cfg, stack.redis_url, stop


def register(app: typer.Typer) -> None:
    @app.command()
    def rewards(profile: Optional[str] = ProfileOpt):
        """Deploy the reward application (one deployment per scorer) and keep it up until stopped."""
        from dyref.launch import start_reward_app
        with _service(profile, ray=True) as (cfg, _url, stop):
            start_reward_app(cfg)
            console.print(f"reward app up: {sorted({c.scorer for c in cfg.rewards.components})}")
            while not stop():
                time.sleep(0.5)

    @app.command()
    def generator(profile: Optional[str] = ProfileOpt,
                  replicas: int = typer.Option(1, help="Generator actors to run (one per GPU)."),
                  prefix: str = typer.Option("generator", help="Actor name prefix (unique per process).")):
        """Run generator actors against the shared Redis and Ray cluster until stopped."""
        import ray

        from services.generator.actor import start_generators
        with _service(profile, ray=True) as (cfg, url, stop):
            gpus = 1.0 if cfg.policy.device.startswith("cuda") else 0.0
            gens = start_generators(cfg, url, n=replicas, prefix=prefix, num_gpus=gpus)
            try:
                while not stop():
                    done, _ = ray.wait([r for _, r in gens], timeout=0.5)
                    if done:
                        ray.get(done)  # surfaces the actor's error and exits non-zero
                        raise typer.Exit(1)
            finally:
                # finish the group in hand (its task is acked, not left for a janitor), then end the
                # actors: on a shared cluster they would otherwise outlive this process's restart
                for a, _ in gens:
                    a.stop.remote()
                try:
                    ray.get([r for _, r in gens], timeout=120)
                except Exception as e:  # noqa: BLE001 - a dead actor's task is reclaimed by the others
                    logging.getLogger("dyref.generator").warning("a generator did not stop cleanly: %s", e)
                for a, _ in gens:
                    ray.kill(a)

    @app.command()
    def learner(profile: Optional[str] = ProfileOpt,
                steps: Optional[int] = typer.Option(None, envvar="DYREF_LEARNER_STEPS",
                                                    help="Target total learner step, as max_steps: a resumed "
                                                    "learner trains the rest (default: rl.total_steps)."),
                records: Optional[str] = typer.Option(None, help="Training records (jsonl); default: the synthetic task."),
                image_root: Optional[str] = typer.Option(None, help="Folder the records' paths are relative to."),
                cases: int = typer.Option(256, help="Synthetic training cases when no --records.")):
        """Run the RL learner against the shared Redis (generators and rewards run elsewhere)."""
        from dyref.train_commands import task_source_for
        from services.learner.rl_recipe import RLRecipe
        # trainer workers beyond the first are Ray Train workers: the learner then joins Ray
        with _service(profile, ray=lambda cfg: cfg.rl.learner.workers > 1 or cfg.rl.learner.weight_transport == "direct") as (cfg, url, stop):
            recipe = RLRecipe(cfg, url, task_source_for(cfg, records, image_root, cases, cfg.rl.seed)).setup()
            try:
                state = recipe.train(until=steps, should_stop=stop,
                                     on_step=lambda s: logging.getLogger("dyref.learner").info(
                                         "step %d v%d %s", s["step"], s["version"],
                                         {k: round(v, 4) for k, v in s.items() if k.startswith("reward/") and k.endswith("/mean")}))
            finally:
                recipe.close()
            console.print_json(json.dumps({"step": state.step, "version": state.version, "audit": recipe.audit()}))

    @app.command()
    def audit(profile: Optional[str] = ProfileOpt, as_json: bool = typer.Option(False, "--json")):
        """Every admitted task ends as exactly one of consumed / dropped_stale / dead_lettered."""
        from dyref.options import load_profile
        from common.transport import Keys, connect
        from services.learner.audit import read_audit
        cfg = load_profile(profile)
        r = connect(cfg.redis.url, cfg.redis)
        counts = read_audit(r, Keys(cfg.redis.namespace), cfg.redis)
        if as_json:
            console.print_json(json.dumps(counts))
            return
        t = Table(title=f"audit of {cfg.redis.url.split('@')[-1]} namespace {cfg.redis.namespace}")
        t.add_column("outcome")
        t.add_column("tasks", justify="right")
        for k, v in counts.items():
            t.add_row(k, str(v))
        console.print(t)
