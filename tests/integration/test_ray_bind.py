"""A local Ray cluster started by DyRef listens on loopback only (issue 20, item 7).

Real Ray, in a child process that imports Ray before calling ``init_ray`` (as the CLI and Serve
do) and without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER in its environment: before the fix Ray then
resolved 127.0.0.1 to the machine's external address and GCS, raylet, workers and the dashboard
and runtime-env agents listened on every interface (``::``, ``0.0.0.0``) or the external IP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, os, time
import ray  # first, as `dyref` and Serve do: Ray reads its constants now
import psutil
from common.config import RayConfig
from dyref.local import init_ray
init_ray(RayConfig(num_cpus=1, object_store_memory_mb=100))

@ray.remote
def pid():
    return os.getpid()
ray.get(pid.remote())  # a worker is up and listening too
node = ray._private.worker._global_node
session = node.get_session_dir_path()
pids = {os.getpid()}
for p in psutil.process_iter(["pid", "cmdline"]):
    try:
        if session in " ".join(p.info["cmdline"] or []):
            pids.add(p.pid)
            pids.update(c.pid for c in p.children(recursive=True))
    except psutil.Error:
        pass
listen = sorted({(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids})
print(json.dumps({"node_ip": node.node_ip_address, "listen": listen}))
ray.shutdown()
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_local_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert rep["node_ip"] == "127.0.0.1", rep
    names = {name for _ip, _port, name in rep["listen"]}
    assert {"gcs_server", "raylet"} <= names, rep  # the listeners were found at all
    exposed = [x for x in rep["listen"] if x[0] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"
