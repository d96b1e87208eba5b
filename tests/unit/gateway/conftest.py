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


class HTTPGateway:
    """An ASGI app served by uvicorn on a free loopback port, in a thread: real HTTP, real sockets."""

    def __init__(self, app):
        import threading

        import uvicorn

        from common.transport import free_port
        from dyref.launch import wait_for
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_for(lambda: self.server.started or not self.thread.is_alive(), 20, 0.05) and self.server.started, \
            "uvicorn did not start"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def http_gateway():
    """Factory: serve an ASGI app over real HTTP (uvicorn, loopback); every server stops at module end."""
    made: list[HTTPGateway] = []

    def make(app) -> HTTPGateway:
        made.append(HTTPGateway(app))
        return made[-1]
    yield make
    for gw in made:
        gw.close()
