"""The gateway on Ray Serve: one deployment whose replicas parse, admit, generate and serve HTTP.

::

    HTTP -> Gateway replica: uvicorn on gateway host:port (SO_REUSEPORT) -> FastAPI (limits, admission, jobs)
                             -> ServedBackend (@serve.batch, one lock, one worker thread)

Each replica runs its own HTTP server on the configured address, in the replica's event loop, and
Serve runs no HTTP proxy (common/serving.py). Serve still owns the replicas (placement, health
checks, restarts, ``num_replicas``); what it no longer does is relay every request through its
proxy: with it the gateway added ~23 ms to a ~55 ms cpu-tiny generation, without it ~14 ms, most
of which is decoding the references (docs/measurements.md §4). Replicas on one node share the port
through SO_REUSEPORT (the kernel spreads connections over them); a single replica binds the port
alone. A cluster publishes the port of the node the replicas run on (common/placement.py). Each
replica admits up to ``gateway.queue_limit`` requests itself and answers 429 before it reads a
body beyond that.

The policy is built in the single worker thread after the replica starts, so the replica answers
at once and the gateway can say 503 "model still loading" (or the load error) instead of hanging.
Torch work never runs on a replica's event loop (docs/measurements.md §4).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from common.config import GatewayConfig, PolicyConfig, RedisConfig
from common.placement import role_resources
from common.serving import start_serve
from services.gateway.engine import GeneratorCore
from services.gateway.prepare import GenJob, GenResult

__all__ = ["Gateway", "ServedBackend", "LocalBackend", "gateway_app", "start_gateway", "listen_socket",
           "APP_NAME", "DEPLOYMENT"]

APP_NAME = "gateway"
DEPLOYMENT = "Gateway"   # the deployment's name, as chaos and the soak test look its replicas up


class ServedBackend:
    """The API's backend on a Serve replica: a GeneratorCore in this process, requests gathered into
    batches by ``@serve.batch`` and run one batch at a time in one worker thread."""

    def __init__(self, core: GeneratorCore, max_batch_size: int, batch_wait_s: float):
        self.core = core
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-gen")
        self.pool.submit(self.core.load)  # first job of the one worker: nothing generates before it
        self.run.set_max_batch_size(max_batch_size)
        self.run.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    async def run(self, jobs: list[GenJob]) -> list[GenResult]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.core.run_batch, list(jobs))

    async def generate(self, job: GenJob) -> GenResult:
        if not self.core.ready:  # answer at once instead of queueing behind the load
            return self.core.not_ready()
        return await self.run(job)

    async def stats(self) -> dict:
        return self.core.stats()


class LocalBackend:
    """The API's backend without Ray: a GeneratorCore in this process (tests, single-process use)."""

    def __init__(self, core: GeneratorCore):
        self.core = core
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-local")

    async def generate(self, job: GenJob) -> GenResult:
        return (await asyncio.get_running_loop().run_in_executor(self.pool, self.core.run_batch, [job]))[0]

    async def stats(self) -> dict:
        return self.core.stats()


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port. ``reuse_port`` (SO_REUSEPORT) lets the replicas of one
    gateway on a node share the port; a single replica binds it alone, so another program (or a
    stale gateway) on the port is an error naming the setting, never a silent share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=5)
class Gateway:
    """One replica: the API and the policy in one process, serving HTTP on ``host:port`` itself."""

    async def __init__(self, gateway_cfg: dict, policy_cfg: dict, redis_cfg: dict, redis_url: str | None,
                       host: str, port: int):
        import uvicorn

        from common.transport import Keys, connect
        from services.gateway.api import Defaults, build_api
        from services.gateway.jobs import JobStore
        gcfg = GatewayConfig.model_validate(gateway_cfg)
        pcfg = PolicyConfig.model_validate(policy_cfg)
        rcfg = RedisConfig.model_validate(redis_cfg)
        if pcfg.device == "cpu":
            import torch
            torch.set_num_threads(1)  # a replica shares the box with Serve's other processes
        self.backend = ServedBackend(GeneratorCore(pcfg, redis_url, rcfg), gcfg.max_batch_size, gcfg.batch_wait_s)
        jobs = JobStore(connect(redis_url, rcfg), Keys(rcfg.namespace), gcfg.job_ttl_s) if redis_url else None
        defaults = Defaults(width=pcfg.width, height=pcfg.height, steps=pcfg.eval_inference_steps,
                            guidance=pcfg.guidance_scale)
        api = build_api(gcfg, self.backend, jobs, defaults, replicas=1)  # admission is per replica
        try:
            sock = listen_socket(host, port, reuse_port=gcfg.replicas > 1)
        except RuntimeError as e:
            raise RuntimeError(f"gateway: {e} (the address is ray.serve_http_host / ray.serve_http_port, "
                               "or --host / --port)") from None
        # no lifespan (the app has no startup hooks), no access log (the app counts requests itself)
        self._server = uvicorn.Server(uvicorn.Config(api, lifespan="off", access_log=False, log_level="warning",
                                                     timeout_keep_alive=30))
        # the replica, not uvicorn, owns the process's signals (uvicorn would take SIGTERM/SIGINT for
        # the whole serve() when it runs on the main thread)
        self._server.capture_signals = contextlib.nullcontext
        self._http = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        self.address = f"{host}:{port}"

    def check_health(self) -> None:
        """Serve restarts a replica whose HTTP server has stopped."""
        if self._http.done():
            err = None if self._http.cancelled() else self._http.exception()
            raise RuntimeError(f"gateway HTTP server on {self.address} stopped: {err!r}")

    async def __del__(self):
        self._server.should_exit = True   # finish the requests in flight, then close the socket
        try:
            await asyncio.wait_for(asyncio.shield(self._http), timeout=10)
        except Exception:  # noqa: BLE001 - a timeout or the server's own error: shutting down either way
            pass


def gateway_app(gateway: GatewayConfig, policy: PolicyConfig, redis: RedisConfig, redis_url: str | None,
                host: str = "127.0.0.1", port: int = 8000):
    """The bound Serve application: ``gateway.replicas`` replicas of the one gateway deployment, each
    serving HTTP on host:port."""
    g, p, r = gateway.model_dump(mode="json"), policy.model_dump(mode="json"), redis.model_dump(mode="json")
    # on a cluster with a gateway node the replicas run there, the node whose port is published
    # (common/placement.py); requests never pass through Serve's router, so its limit is not the
    # admission limit (each replica's own queue_limit is)
    return Gateway.options(num_replicas=gateway.replicas,
                           ray_actor_options={"num_cpus": 0, "resources": role_resources("gateway")},
                           ).bind(g, p, r, redis_url, host, port)


def start_gateway(gateway: GatewayConfig, policy: PolicyConfig, redis: RedisConfig, redis_url: str | None,
                  host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME, blocking: bool = False):
    """Deploy the gateway app (Ray must be initialised); its replicas serve HTTP on host:port.
    Returns the deployment's handle once every replica is up (the policy may still be loading: see /readyz)."""
    start_serve()
    return serve.run(gateway_app(gateway, policy, redis, redis_url, host, port), name=name, route_prefix=None,
                     blocking=blocking)
