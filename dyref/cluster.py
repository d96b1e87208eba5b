"""`dyref cluster up|down|status`: the docker-compose.yml stack driven through the Docker SDK.

No `docker compose` plugin is needed: the compose file is read here (YAML anchors and merge keys,
`${VAR}` / `${VAR:-default}` / `${VAR-default}` interpolation, profiles, depends_on), the DyRef
image is built from deploy/Dockerfile with the Docker Engine API, and the services are created
in dependency order, each waiting for its dependencies' conditions (service_started /
service_healthy). Containers carry the compose project/service labels, so `docker compose ps`
sees them too. Only the compose features the stack uses are supported; anything else is an error
naming the field.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml

__all__ = ["ComposeError", "ServicePlan", "load_plan", "interpolate", "parse_duration", "up", "down", "status", "cluster_app"]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROJECT = "dyref"
_SUPPORTED = {"image", "build", "command", "environment", "volumes", "ports", "healthcheck", "depends_on", "profiles",
              "restart", "shm_size", "deploy", "networks"}


class ComposeError(ValueError):
    """The compose file uses something this driver does not support, or is inconsistent."""


@dataclass
class ServicePlan:
    name: str
    image: str
    build_target: Optional[str]
    command: list[str]
    environment: dict[str, str]
    volumes: dict[str, dict]          # source (named volume or absolute path) -> {bind, mode}
    named_volumes: list[str]
    ports: dict[str, Any]             # "8000/tcp" -> host port or (host ip, port)
    healthcheck: Optional[dict]       # Docker API form (nanoseconds)
    depends_on: dict[str, str]        # service -> condition
    aliases: list[str]
    restart: Optional[str]
    shm_size: Optional[str]
    gpus: Optional[int] = None        # device request count (nvidia), None = no GPU
    extra: dict = field(default_factory=dict)


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose interpolation: ${VAR}, ${VAR:-default} (unset or empty), ${VAR-default} (unset), $VAR, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        got = env.get(name)
        if op == ":-" and not got:
            return default
        if op == "-" and got is None:
            return default
        return got or ""
    return _VAR.sub(sub, value)


def parse_duration(text: str | int | float) -> int:
    """Compose duration ('1m30s', '10s', '500ms') -> nanoseconds (the Docker API unit)."""
    if isinstance(text, (int, float)):
        return int(text * 1e9)
    total, pos = 0.0, 0
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ComposeError(f"bad duration {text!r}")
    return int(total * 1e9)


def _volumes(project: str, root: Path, specs: list) -> tuple[dict[str, dict], list[str]]:
    out, named = {}, []
    for spec in specs or []:
        if not isinstance(spec, str):
            raise ComposeError(f"volume {spec!r}: only the short 'source:target[:ro]' form is supported")
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ComposeError(f"volume {spec!r}: expected source:target[:mode]")
        src, target, mode = parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"
        if src.startswith((".", "/", "~")):
            src = str((root / os.path.expanduser(src)).resolve())
        else:
            named.append(src)
            src = f"{project}_{src}"
        out[src] = {"bind": target, "mode": mode}
    return out, named


def _ports(specs: list) -> dict[str, Any]:
    out = {}
    for spec in specs or []:
        parts = str(spec).split(":")
        if len(parts) == 3:
            out[f"{parts[2]}/tcp"] = (parts[0], int(parts[1]))
        elif len(parts) == 2:
            out[f"{parts[1]}/tcp"] = int(parts[0])
        else:
            raise ComposeError(f"port {spec!r}: expected [ip:]host:container")
    return out


def _healthcheck(hc: Optional[dict]) -> Optional[dict]:
    if not hc:
        return None
    out = {"test": hc["test"]}
    for key, api in (("interval", "interval"), ("timeout", "timeout"), ("start_period", "start_period")):
        if key in hc:
            out[api] = parse_duration(hc[key])
    if "retries" in hc:
        out["retries"] = int(hc["retries"])
    return out


def _order(services: dict[str, ServicePlan]) -> list[ServicePlan]:
    done: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in done:
            return
        if n in visiting:
            raise ComposeError(f"depends_on cycle through {n!r}")
        visiting.add(n)
        for dep in services[n].depends_on:
            if dep not in services:
                raise ComposeError(f"service {n!r} depends on {dep!r}, which this profile does not start")
            visit(dep)
        visiting.discard(n)
        done.append(n)
    for n in services:
        visit(n)
    return [services[n] for n in done]


def load_plan(profile: str = "cpu", path: Path = COMPOSE_FILE, env: Optional[dict] = None,
              project: str = PROJECT) -> list[ServicePlan]:
    """The services `profile` starts, in dependency order, resolved as Compose would."""
    env = dict(os.environ if env is None else env)
    raw = yaml.safe_load(Path(path).read_text())
    root = Path(path).resolve().parent
    plans: dict[str, ServicePlan] = {}
    for name, svc in interpolate(raw["services"], env).items():
        unknown = set(svc) - _SUPPORTED
        if unknown:
            raise ComposeError(f"service {name!r}: unsupported compose keys {sorted(unknown)}")
        if svc.get("profiles") and profile not in svc["profiles"]:
            continue
        env_map = {k: "" if v is None else str(v) for k, v in (svc.get("environment") or {}).items()}
        vols, named = _volumes(project, root, svc.get("volumes", []))
        deps = svc.get("depends_on") or {}
        deps = {d: "service_started" for d in deps} if isinstance(deps, list) else {d: c.get("condition", "service_started") for d, c in deps.items()}
        devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        gpus = sum(int(d.get("count", 1)) for d in devices if "gpu" in d.get("capabilities", [])) or None
        aliases = [a for net in (svc.get("networks") or {}).values() for a in ((net or {}).get("aliases") or [])]
        build = svc.get("build")
        cmd = svc.get("command") or []
        plans[name] = ServicePlan(
            name=name, image=svc["image"], build_target=(build or {}).get("target") if build else None,
            command=cmd if isinstance(cmd, list) else cmd.split(), environment=env_map, volumes=vols,
            named_volumes=named, ports=_ports(svc.get("ports")), healthcheck=_healthcheck(svc.get("healthcheck")),
            depends_on=deps, aliases=aliases, restart=svc.get("restart"), shm_size=svc.get("shm_size"), gpus=gpus)
    if not plans:
        raise ComposeError(f"profile {profile!r} starts no service")
    return _order(plans)


# ---- Docker ----------------------------------------------------------------------------------

def _client():
    import docker
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as e:  # DockerException and connection errors alike
        raise RuntimeError(f"no Docker engine answers ({e}); start Docker or set DOCKER_HOST") from None


def _labels(project: str, service: str) -> dict[str, str]:
    return {"com.docker.compose.project": project, "com.docker.compose.service": service,
            "com.docker.compose.container-number": "1", "com.docker.compose.oneoff": "False"}


def _health(container) -> str:
    container.reload()
    state = container.attrs.get("State", {})
    if not state.get("Running"):
        return state.get("Status", "exited")
    return (state.get("Health") or {}).get("Status", "running")


def _wait(client, project: str, service: str, condition: str, timeout_s: float, log: Callable[[str], None]) -> None:
    c = client.containers.get(f"{project}-{service}-1")
    deadline = time.monotonic() + timeout_s
    want = {"service_started": {"running", "healthy", "starting", "unhealthy"}, "service_healthy": {"healthy"},
            "service_completed_successfully": {"exited"}}[condition]
    while True:
        h = _health(c)
        if h in want:
            return
        if h in ("exited", "dead") and condition != "service_completed_successfully":
            raise RuntimeError(f"{service} stopped ({h}); see `docker logs {c.name}`")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service} not {condition.split('_')[1]} after {timeout_s:.0f}s (now {h})")
        time.sleep(2)


def up(profile: str = "cpu", build: bool = True, timeout_s: float = 600, project: str = PROJECT,
       path: Path = COMPOSE_FILE, log: Callable[[str], None] = print) -> list[dict]:
    """Build the image(s), create network and volumes, start every service of `profile` in
    dependency order, waiting for each dependency's condition. Returns `status()`."""
    import docker
    env = dict(os.environ)
    token_file = ROOT / ".dyref" / "ray_auth_token"
    if env.get("RAY_AUTH_MODE", "token") == "token" and not env.get("DYREF_RAY_AUTH_TOKEN"):
        if not token_file.exists():  # one token per checkout, shared by every node and driver
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.write_text(secrets.token_hex(32))
            token_file.chmod(0o600)
        env["DYREF_RAY_AUTH_TOKEN"] = token_file.read_text().strip()
    plan = load_plan(profile, path, env, project)
    client = _client()
    built: set[tuple[str, str]] = set()
    for s in plan:
        if s.build_target and build and (s.image, s.build_target) not in built:
            log(f"building {s.image} (target {s.build_target})")
            client.images.build(path=str(path.parent), dockerfile="deploy/Dockerfile", target=s.build_target,
                                tag=s.image, rm=True)
            built.add((s.image, s.build_target))
        elif not s.build_target:
            try:
                client.images.get(s.image)
            except docker.errors.ImageNotFound:
                log(f"pulling {s.image}")
                client.images.pull(s.image)
    net = f"{project}_default"
    if not client.networks.list(names=[net]):
        client.networks.create(net, driver="bridge", labels={"com.docker.compose.project": project,
                                                             "com.docker.compose.network": "default"})
    for v in sorted({v for s in plan for v in s.named_volumes}):
        if not client.volumes.list(filters={"name": f"{project}_{v}"}):
            client.volumes.create(f"{project}_{v}", labels={"com.docker.compose.project": project,
                                                           "com.docker.compose.volume": v})
    for s in plan:
        for dep, cond in s.depends_on.items():
            _wait(client, project, dep, cond, timeout_s, log)
        name = f"{project}-{s.name}-1"
        try:
            old = client.containers.get(name)
            log(f"replacing {name}")
            old.remove(force=True)
        except docker.errors.NotFound:
            pass
        kwargs: dict[str, Any] = dict(
            name=name, command=s.command or None, environment=s.environment, volumes=s.volumes, ports=s.ports,
            labels=_labels(project, s.name), detach=True, network=net, shm_size=s.shm_size,
            networking_config={net: client.api.create_endpoint_config(aliases=[s.name, *s.aliases])})
        if s.healthcheck:
            kwargs["healthcheck"] = s.healthcheck
        if s.restart:
            kwargs["restart_policy"] = {"Name": s.restart}
        if s.gpus:
            kwargs["device_requests"] = [docker.types.DeviceRequest(driver="nvidia", count=s.gpus, capabilities=[["gpu"]])]
        log(f"starting {s.name}")
        client.containers.run(s.image, **kwargs)
    return status(project)


def down(project: str = PROJECT, volumes: bool = False, log: Callable[[str], None] = print) -> int:
    """Stop and remove the stack's containers (and network; named volumes only with volumes=True)."""
    client = _client()
    containers = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    for c in containers:
        log(f"removing {c.name}")
        c.remove(force=True)
    for n in client.networks.list(filters={"label": f"com.docker.compose.project={project}"}):
        n.remove()
    if volumes:
        for v in client.volumes.list(filters={"label": f"com.docker.compose.project={project}"}):
            log(f"removing volume {v.name}")
            v.remove(force=True)
    return len(containers)


def status(project: str = PROJECT) -> list[dict]:
    """One row per container of the stack: service, state, health, published ports."""
    client = _client()
    rows = []
    for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        h = _health(c)
        ports = sorted(f"{b[0]['HostIp'] or '0.0.0.0'}:{b[0]['HostPort']}->{p}" for p, b in (c.ports or {}).items() if b)
        rows.append({"service": c.labels.get("com.docker.compose.service"), "container": c.name,
                     "state": c.attrs["State"]["Status"], "health": h, "ok": h in ("healthy", "running"), "ports": ports})
    return sorted(rows, key=lambda r: r["service"] or "")


# ---- CLI -------------------------------------------------------------------------------------

cluster_app = typer.Typer(help="The local docker compose cluster (redis, ray head, services, prometheus, grafana) "
                               "through the Docker SDK.", no_args_is_help=True)


def _print(rows: list[dict], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"dyref cluster ({len(rows)} containers)")
    for col in ("service", "state", "health", "ports"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["service"], r["state"], f"[{'green' if r['ok'] else 'red'}]{r['health']}", " ".join(r["ports"]))
    Console().print(t)


@cluster_app.command("up")
def cli_up(gpu: bool = typer.Option(False, "--gpu", help="The GPU profile (CUDA image, device requests)."),
           no_build: bool = typer.Option(False, "--no-build", help="Use the existing image."),
           timeout: float = typer.Option(600, help="Seconds to wait for each dependency."),
           as_json: bool = typer.Option(False, "--json")):
    """Build the image and start the stack, each service after its dependencies are healthy."""
    try:
        rows = up("gpu" if gpu else "cpu", build=not no_build, timeout_s=timeout)
    except (ComposeError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    _print(rows, as_json)
    raise typer.Exit(0 if rows and all(r["ok"] for r in rows) else 1)


@cluster_app.command("down")
def cli_down(volumes: bool = typer.Option(False, "--volumes", help="Also delete Redis data, checkpoints, Prometheus and Grafana data.")):
    """Stop and remove the stack (named volumes are kept unless --volumes)."""
    try:
        n = down(volumes=volumes)
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed {n} containers")


@cluster_app.command("status")
def cli_status(as_json: bool = typer.Option(False, "--json")):
    """Health of every container of the stack; exit 1 unless all are running and healthy."""
    try:
        rows = status()
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    _print(rows, as_json)
    raise typer.Exit(0 if rows and all(r["ok"] for r in rows) else 1)
