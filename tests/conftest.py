"""Shared fixtures: a real Redis (embedded redis-server on a free port) and quiet, single-threaded torch."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from common.transport import EmbeddedRedis, Keys, connect  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # 2 shared cores: oversubscription makes tiny models slower, not faster
    import torch
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session; tests isolate themselves by key namespace."""
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis"), maxmemory_mb=512) as server:
        yield server


@pytest.fixture
def keys(request) -> Keys:
    import re
    import uuid
    name = re.sub(r"[^a-z0-9]", "", request.node.name.lower())[:16]
    return Keys(namespace=f"t{name}{uuid.uuid4().hex[:6]}")


@pytest.fixture
def r(redis_server):
    client = connect(redis_server.url)
    yield client
    client.close()
