"""The gateway on Ray Serve: an ingress deployment (FastAPI) calling a generator deployment.

::

    HTTP -> Serve proxy -> GatewayIngress (FastAPI, admission, jobs) --DeploymentHandle--> GeneratorDeployment
                                                                                           (@serve.batch, one lock,
                                                                                            one worker thread)

The generator builds its policy in its single worker thread after the replica starts, so the
replica answers ``stats()`` at once and the gateway can say 503 "model still loading" (or the
load error) instead of hanging. Torch work never runs on a replica's event loop (docs/measurements.md §4).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.serve.handle import DeploymentHandle

from common.config import GatewayConfig, PolicyConfig, RedisConfig
from services.gateway.engine import GeneratorCore
from services.gateway.prepare import GenJob, GenResult

__all__ = ["GeneratorDeployment", "GatewayIngress", "HandleBackend", "LocalBackend", "gateway_app", "start_gateway",
           "APP_NAME"]

APP_NAME = "gateway"


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=5)
class GeneratorDeployment:
    def __init__(self, policy_cfg: dict, redis_url: str | None, redis_cfg: dict, gateway_cfg: dict):
        pcfg = PolicyConfig.model_validate(policy_cfg)
        gcfg = GatewayConfig.model_validate(gateway_cfg)
        if pcfg.device == "cpu":
            import torch
            torch.set_num_threads(1)  # a replica shares the box with Serve's other processes
        self.core = GeneratorCore(pcfg, redis_url, RedisConfig.model_validate(redis_cfg))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-gen")
        self.pool.submit(self.core.load)  # first job of the one worker: nothing generates before it
        self.run.set_max_batch_size(gcfg.max_batch_size)
        self.run.set_batch_wait_timeout_s(gcfg.batch_wait_s)

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


class HandleBackend:
    """The API's backend inside Serve: the generator deployment's handle."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def generate(self, job: GenJob) -> GenResult:
        return await self.handle.generate.remote(job)

    async def stats(self) -> dict:
        return await self.handle.stats.remote()


class LocalBackend:
    """The API's backend without Ray: a GeneratorCore in this process (tests, single-process use)."""

    def __init__(self, core: GeneratorCore):
        self.core = core
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-local")

    async def generate(self, job: GenJob) -> GenResult:
        return (await asyncio.get_running_loop().run_in_executor(self.pool, self.core.run_batch, [job]))[0]

    async def stats(self) -> dict:
        return self.core.stats()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class GatewayIngress:
    def __init__(self, generator: DeploymentHandle, gateway_cfg: dict, policy_cfg: dict, redis_cfg: dict,
                 redis_url: str | None):
        from common.transport import Keys, connect
        from services.gateway.api import Defaults, build_api
        from services.gateway.jobs import JobStore
        gcfg = GatewayConfig.model_validate(gateway_cfg)
        pcfg = PolicyConfig.model_validate(policy_cfg)
        rcfg = RedisConfig.model_validate(redis_cfg)
        jobs = JobStore(connect(redis_url, rcfg), Keys(rcfg.namespace), gcfg.job_ttl_s) if redis_url else None
        defaults = Defaults(width=pcfg.width, height=pcfg.height, steps=pcfg.eval_inference_steps,
                            guidance=pcfg.guidance_scale)
        self._api = build_api(gcfg, HandleBackend(generator), jobs, defaults)

    def __serve_build_asgi_app__(self):
        return self._api


def gateway_app(gateway: GatewayConfig, policy: PolicyConfig, redis: RedisConfig, redis_url: str | None):
    """The bound Serve application: ingress + generator deployment (``gateway.replicas`` replicas)."""
    g, p, r = gateway.model_dump(mode="json"), policy.model_dump(mode="json"), redis.model_dump(mode="json")
    # the ingress admits up to queue_limit per replica itself; Serve's own queue is a backstop, so
    # the handle answers BackPressureError (-> 429) instead of queueing without bound
    per_replica = gateway.queue_limit + gateway.max_batch_size
    gen = GeneratorDeployment.options(num_replicas=gateway.replicas, max_ongoing_requests=per_replica,
                                      max_queued_requests=per_replica * gateway.replicas).bind(p, redis_url, r, g)
    return GatewayIngress.options(max_ongoing_requests=max(1000, 8 * gateway.queue_limit * gateway.replicas)).bind(
        gen, g, p, r, redis_url)


def start_gateway(gateway: GatewayConfig, policy: PolicyConfig, redis: RedisConfig, redis_url: str | None,
                  host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME, route_prefix: str = "/",
                  blocking: bool = False):
    """Start Serve's HTTP proxy on host:port (Ray must be initialised) and deploy the gateway app.
    Returns the ingress handle once every replica is up (the policy may still be loading: see /readyz)."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(gateway_app(gateway, policy, redis, redis_url), name=name, route_prefix=route_prefix,
                     blocking=blocking)
