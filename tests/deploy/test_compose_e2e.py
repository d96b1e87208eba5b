"""scripts/compose_e2e.sh in its reduced form (E2E_QUICK=1): the CPU stack built, brought up with
the real compose CLI, trained for a few RL steps with the ledger read back, served, scraped and torn
down. Needs a Docker engine, or root to start Debian's; skipped with the reason elsewhere."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dyref_promql import ROOT


def _why_not() -> str | None:
    try:
        import docker
        docker.from_env().ping()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means no engine answers
        engine = f"no Docker engine answers ({type(e).__name__})"
    if os.geteuid() != 0:
        return f"{engine} and this is not root, so none can be started"
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        return f"{engine} and neither dockerd nor apt-get is here"
    return None


@pytest.mark.docker
@pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
def test_compose_stack_end_to_end_reduced():
    env = {**os.environ, "E2E_QUICK": "1"}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "compose_e2e.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=3600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    for line in ("healthy after", "ledger: admitted", "/generate: 200", "/v1/images/edits: 200",
                 "Prometheus has every training series", "PASS"):
        assert line in out, f"missing {line!r} in:\n{out[-6000:]}"
    assert "left behind" not in out
