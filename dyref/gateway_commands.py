"""`dyref gateway serve` (the HTTP gateway on Ray Serve) and `dyref generate` (its client).

dyref.cli also registers ``generate`` at the top level, so ``dyref generate --prompt ... --ref
subject:a.png -o out.png`` works.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer
from rich.console import Console

__all__ = ["gateway_app", "generate", "serve"]

gateway_app = typer.Typer(help="HTTP gateway: serve the current policy; generate from it.", no_args_is_help=True)
console = Console(stderr=True)


@gateway_app.command("serve")
def serve(profile: Optional[str] = typer.Option(None, "--config", "-c", help="Profile name or YAML path."),
          host: Optional[str] = typer.Option(None, help="Bind address (default: ray.serve_http_host)."),
          port: Optional[int] = typer.Option(None, help="Port (default: ray.serve_http_port).")):
    """Run the gateway (Redis embedded if none answers, local Ray unless ray.address) until Ctrl-C."""
    from dyref.options import load_profile
    from services.gateway.deployments import start_gateway
    from dyref.local import local_stack
    cfg = load_profile(profile)
    with local_stack(cfg) as stack:
        h, p = host or cfg.ray.serve_http_host, port or cfg.ray.serve_http_port
        start_gateway(cfg.gateway, cfg.policy, cfg.redis, stack.redis_url, host=h, port=p)
        console.print(f"gateway on http://{h}:{p}/ (docs: /docs, readiness: /readyz); Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@gateway_app.command("generate")
def generate(prompt: str = typer.Option(..., "--prompt", "-p", help="What to generate."),
             ref: list[str] = typer.Option([], "--ref", "-r", help="role:path (roles: subject, style, background, "
                                           "lighting, pose), repeatable, in the order the prompt names them."),
             out: str = typer.Option("out.png", "--out", "-o", help="Output file (several images: out-<i>.png)."),
             url: str = typer.Option("http://127.0.0.1:8000", envvar="DYREF_GATEWAY_URL", help="Gateway URL."),
             api_key: Optional[str] = typer.Option(None, envvar="DYREF_API_KEY", help="Bearer API key."),
             n: int = typer.Option(1, help="Images."), width: Optional[int] = typer.Option(None),
             height: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
             steps: Optional[int] = typer.Option(None, help="num_inference_steps."),
             guidance: Optional[float] = typer.Option(None, help="guidance_scale."),
             negative_prompt: Optional[str] = typer.Option(None), wait_async: bool = typer.Option(
                 False, "--async", help="Submit with Prefer: respond-async and poll.")):
    """Generate images through a running gateway and write them to files."""
    from services.gateway.client import GatewayClient, GatewayError, parse_ref, save_images
    try:
        refs = [parse_ref(s) for s in ref]
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    client = GatewayClient(url, api_key)
    try:
        resp = client.generate(prompt, refs, wait_async=wait_async, n=n, width=width, height=height, seed=seed,
                               num_inference_steps=steps, guidance_scale=guidance, negative_prompt=negative_prompt,
                               output_format=out.rsplit(".", 1)[-1].lower().replace("jpg", "jpeg")
                               if out.lower().endswith((".png", ".jpg", ".jpeg", ".webp")) else "png")
    except GatewayError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1)
    except Exception as e:  # connection refused etc.
        console.print(f"[red]gateway unreachable at {url}: {type(e).__name__}: {e}[/red]")
        raise typer.Exit(1)
    finally:
        client.close()
    paths = save_images(resp, out)
    sys.stdout.write(json.dumps({"id": resp["id"], "policy_version": resp.get("policy_version"),
                                 "files": [str(p) for p in paths], "timings": resp.get("timings", {})}) + "\n")
