"""The gateway on Ray Serve: one deployment that parses, admits and generates.

::

    HTTP -> Serve proxy -> Gateway replica: FastAPI (limits, admission, jobs)
                                            -> ServedBackend (@serve.batch, one lock, one worker thread)

The API and the policy share a replica, so a request crosses one Ray hop (proxy -> replica), not
two: the earlier split (an ingress deployment calling a generator deployment through a handle)
cost ~38 ms per request on a ~85 ms cpu-tiny generation, mostly that second hop carrying the
decoded references there and the images back (docs/measurements.md §4). Each replica admits up to
``gateway.queue_limit`` requests itself and answers 429 before it reads a body beyond that.

The policy is built in the single worker thread after the replica starts, so the replica answers
at once and the gateway can say 503 "model still loading" (or the load error) instead of hanging.
Torch work never runs on a replica's event loop (docs/measurements.md §4).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from common.config import GatewayConfig, PolicyConfig, RedisConfig
from common.placement import role_resources
from services.gateway.engine import GeneratorCore
from services.gateway.prepare import GenJob, GenResult

__all__ = ["Gateway", "ServedBackend", "LocalBackend", "gateway_app", "start_gateway", "APP_NAME", "DEPLOYMENT"]

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


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=5)
@serve.ingress()
class Gateway:
    def __init__(self, gateway_cfg: dict, policy_cfg: dict, redis_cfg: dict, redis_url: str | None):
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
        self._api = build_api(gcfg, self.backend, jobs, defaults, replicas=1)  # admission is per replica

    def __serve_build_asgi_app__(self):
        return self._api


def gateway_app(gateway: GatewayConfig, policy: PolicyConfig, redis: RedisConfig, redis_url: str | None):
    """The bound Serve application: ``gateway.replicas`` replicas of the one gateway deployment."""
    g, p, r = gateway.model_dump(mode="json"), policy.model_dump(mode="json"), redis.model_dump(mode="json")
    # each replica admits up to queue_limit itself and answers 429 beyond it; Serve's own limit is
    # set well above that so the proxy hands requests over instead of queueing them out of sight
    # on a cluster with a gateway node, the replicas run there: Serve's proxy runs only on nodes with
    # replicas, and that node's container is the one publishing the port (common/placement.py)
    return Gateway.options(num_replicas=gateway.replicas,
                           ray_actor_options={"num_cpus": 0, "resources": role_resources("gateway")},
                           max_ongoing_requests=max(1000, 8 * gateway.queue_limit)).bind(g, p, r, redis_url)


def start_gateway(gateway: GatewayConfig, policy: PolicyConfig, redis: RedisConfig, redis_url: str | None,
                  host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME, route_prefix: str = "/",
                  blocking: bool = False):
    """Start Serve's HTTP proxy on host:port (Ray must be initialised) and deploy the gateway app.
    Returns the ingress handle once every replica is up (the policy may still be loading: see /readyz)."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(gateway_app(gateway, policy, redis, redis_url), name=name, route_prefix=route_prefix,
                     blocking=blocking)
