"""One tiny policy for the gateway's unit tests (built once: ~5 s), serving from a unique Redis namespace."""
from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def gw_keys():
    from common.transport import Keys
    return Keys(namespace=f"tgwu{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def core(redis_server, gw_keys):
    import torch

    from common.config import PolicyConfig, RedisConfig
    from services.gateway.engine import GeneratorCore
    torch.set_num_threads(1)
    c = GeneratorCore(PolicyConfig(), redis_server.url, RedisConfig(url=redis_server.url, namespace=gw_keys.namespace))
    c.load()
    assert c.ready, c.load_error
    return c
