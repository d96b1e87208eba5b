"""Bring up the local stack (Redis, Ray) the way every service expects it, and report its health."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from common.config import DyRefConfig, RayConfig
from common.transport import EmbeddedRedis, connect, ensure_redis

__all__ = ["init_ray", "LocalStack", "local_stack", "redis_health", "ray_health"]


def init_ray(cfg: RayConfig) -> None:
    """Start (or join) Ray bound to loopback, without dashboard or usage stats on a laptop."""
    # Ray picks the machine's external address by default; this keeps every socket on 127.0.0.1.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")
    import ray
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, namespace=cfg.namespace, log_to_driver=False)
        return
    ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, namespace=cfg.namespace,
             object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
             include_dashboard=cfg.include_dashboard, _node_ip_address=cfg.node_ip,
             _temp_dir=cfg.temp_dir, log_to_driver=False, configure_logging=True, logging_level="WARNING")


def redis_health(url: str) -> dict:
    r = connect(url)
    try:
        t0 = time.perf_counter()
        r.ping()
        info = r.info()
        return {"ok": True, "url": url.split("@")[-1], "version": info.get("redis_version"),
                "used_memory_mb": round(info.get("used_memory", 0) / 2**20, 1),
                "maxmemory_policy": info.get("maxmemory_policy"), "ping_ms": round((time.perf_counter() - t0) * 1e3, 2)}
    except Exception as e:  # health reports, it does not raise
        return {"ok": False, "url": url.split("@")[-1], "error": str(e)}
    finally:
        r.close()


def ray_health() -> dict:
    import ray
    if not ray.is_initialized():
        return {"ok": False, "error": "ray not initialised"}
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"ok": bool(nodes), "nodes": len(nodes), "node_ip": nodes[0]["NodeManagerAddress"] if nodes else None,
            "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0)}


@dataclass
class LocalStack:
    redis_url: str
    embedded: EmbeddedRedis | None
    ray_started: bool = False
    extra: dict = field(default_factory=dict)

    def health(self) -> dict:
        out = {"redis": redis_health(self.redis_url) | {"embedded": self.embedded is not None}}
        if self.ray_started:
            out["ray"] = ray_health()
        return out


@contextmanager
def local_stack(cfg: DyRefConfig, with_ray: bool = True):
    """Redis (embedded if none answers) and a local Ray; torn down on exit."""
    url, server = ensure_redis(cfg.redis)
    stack = LocalStack(url, server)
    try:
        if with_ray:
            init_ray(cfg.ray)
            stack.ray_started = True
        yield stack
    finally:
        if stack.ray_started:
            import ray
            try:
                from ray import serve
                serve.shutdown()
            except Exception:
                pass
            ray.shutdown()
        if server:
            server.stop()
