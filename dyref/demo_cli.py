"""`dyref demo`: run the two-stage job on the local stack, print the report, then serve /generate."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console

from common.config import DyRefConfig
from dyref.demo import ABLATION_VARIANTS, DemoPlan, demo_config, run_ablation, run_demo

console = Console()
QUICK = DemoPlan(n_train=64, n_test=16, sft_steps=8, sft_eval_every=4, rl_steps=3, eval_steps=4, eval_subset=8,
                 rl_eval_every=1)


def _plan_for(out: Path, quick: bool, seed: int = 0) -> DemoPlan:
    plan = dataclasses.replace(QUICK if quick else DemoPlan(), seed=seed)
    saved = out / "plan.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(asdict(plan))):
        raise typer.BadParameter(f"{out} holds a run with another plan ({saved}); use a new --out or delete it")
    return plan


def run_demo_command(cfg: DyRefConfig, out: str, quick: bool, serve_seconds: float, port: int, seed: int = 0) -> None:
    from dyref.local import local_stack
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(out)
    plan = _plan_for(out_dir, quick, seed)
    if serve_seconds != 0:   # the gateway binds the port only after RL: refuse a busy one now, not in 15 minutes
        from services.gateway.deployments import listen_socket
        try:
            listen_socket("127.0.0.1", port).close()
        except RuntimeError as e:
            raise typer.BadParameter(f"{e}; choose another with --port", param_hint="--port") from None
    t0 = time.perf_counter()
    with local_stack(cfg) as stack:
        console.print(f"[bold]DyRef demo[/bold] -> {out_dir}  (Redis {stack.redis_url.split('@')[-1]}"
                      f"{', embedded' if stack.embedded else ''}; Ray local; seed {plan.seed})")
        run_demo(cfg, out_dir, plan, stack.redis_url, say=console.print)
        console.print(f"\n[bold]report[/bold]: {out_dir / 'report.md'}  (plots in {out_dir / 'plots'}); "
                      f"{time.perf_counter() - t0:.0f}s so far")
        console.print((out_dir / "report.md").read_text().split("Stage by stage")[0])
        if serve_seconds != 0:
            _serve(cfg, out_dir, plan, stack.redis_url, serve_seconds, port)


def _serve(cfg: DyRefConfig, out: Path, plan: DemoPlan, redis_url: str, seconds: float, port: int) -> None:
    """Serve the final RL policy (the newest weights the learner published) and show how to call it."""
    from dyref.demo import rl_policy_config
    from services.gateway.client import GatewayClient
    from services.gateway.deployments import start_gateway
    from dyref.launch import StopFlag, wait_for
    dcfg = rl_policy_config(demo_config(cfg, out, plan), out / "sft" / "trainable.safetensors")
    start_gateway(dcfg.gateway, dcfg.policy, dcfg.redis, redis_url, host="127.0.0.1", port=port)
    url = f"http://127.0.0.1:{port}"
    client = GatewayClient(url)
    import base64

    import httpx

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    if not wait_for(ready, 180, 0.5):
        raise RuntimeError(f"the gateway at {url} did not become ready in 180 s")
    from common.synthetic import make_split
    case = make_split("serve", 1, plan.seed + 99, size=plan.size, ref_size=16, max_refs=min(3, plan.max_refs),
                      categories=list(plan.categories), layout=plan.layout,
                      max_subjects=plan.max_subjects)[0]
    ref_dir = out / "example_refs"
    ref_dir.mkdir(exist_ok=True)
    refs = []
    for i, (role, im, _name) in enumerate(case.references, 1):
        path = ref_dir / f"{i}_{role}.png"
        im.save(path)
        refs.append((role, path))
    resp = client.generate(case.prompt, refs, seed=1)
    out_png = out / "served_example.png"
    out_png.write_bytes(base64.b64decode(resp["images"][0]["b64_json"]))
    ref_args = " ".join(f"--ref {role}:{path}" for role, path in refs)
    console.print(f"\n[bold]/generate is up[/bold] at {url} (web page {url}/ , API docs {url}/docs), serving policy "
                  f"version {resp.get('policy_version')}; an example answer is in {out_png}. Call it with:")
    console.print(f"  ./dev generate --url {url} --prompt {json.dumps(case.prompt)} {ref_args} -o out.png", soft_wrap=True)
    console.print(f"  curl -s {url}/v1/generations -H 'content-type: application/json' -d "
                  "'{\"prompt\": \"...\", \"references\": [{\"role\": \"subject\", \"image\": \"<base64 PNG>\"}]}'",
                  soft_wrap=True)
    stop = StopFlag()
    with stop.on_signals():
        deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
        if seconds < 0:
            console.print("Ctrl-C stops the server.")
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.5)


def run_ablation_command(cfg: DyRefConfig, out: str, quick: bool, seeds: list[int], variants: list[str],
                         rl_steps: int | None = None) -> None:
    from dyref.local import local_stack
    unknown = [v for v in variants if v not in ABLATION_VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; expected some of {', '.join(ABLATION_VARIANTS)}")
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(out)
    plan = QUICK if quick else DemoPlan()
    if rl_steps:
        plan = dataclasses.replace(plan, rl_steps=rl_steps)
    with local_stack(cfg) as stack:
        run_ablation(cfg, out_dir, plan, stack.redis_url, seeds=tuple(seeds), variants=tuple(variants), say=console.print)
    console.print((out_dir / "ablation" / "ablation.md").read_text())
