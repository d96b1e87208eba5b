"""Soak mode: continuous tiny training (and /generate load on the gateway) for N minutes.

Samples the resident memory of every process of the stack (the learner = this process, Redis,
the generator actor, the reward and gateway replicas, the Serve controller/proxy, Ray's own
daemons) and Redis ``used_memory`` after a warm-up and then every ``sample_s``; reports start and
end per process, the ledger check of the run, and whether every process is still alive.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

from common.transport import Keys, connect, free_port
from dyref.chaos.harness import Loop, actor_pid, chaos_cfg, ledger, own_redis, replica_actors, wait_until

__all__ = ["run_soak", "stack_processes"]


def _named_actor_pids() -> dict[str, int]:
    import ray
    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name, ns = (a["name"], a["namespace"]) if isinstance(a, dict) else (a, None)
        if not name.startswith(("SERVE_CONTROLLER", "SERVE_PROXY")):
            continue
        with contextlib.suppress(Exception):
            out[name.split("::")[0][:24]] = actor_pid(ray.get_actor(name, namespace=ns))
    return out


def _ray_daemons() -> dict[str, int]:
    out = {}
    with contextlib.suppress(Exception):
        import ray
        node = ray._private.worker._global_node  # the local node this driver started
        for kind, infos in node.all_processes.items():
            for i, info in enumerate(infos):
                if info.process is not None:
                    out[f"ray:{kind}{'' if i == 0 else i}"] = info.process.pid
    return out


def stack_processes(loop: Loop, redis_pid: int | None) -> dict[str, int]:
    """name -> pid of every process of the local stack."""
    procs = {"learner (driver)": os.getpid()}
    if redis_pid:
        procs["redis-server"] = redis_pid
    for i, (a, _) in enumerate(loop.gens):
        with contextlib.suppress(Exception):
            procs[f"generator-{i}"] = actor_pid(a)
    for app, dep in (("rewards", "scorer-colour"), ("gateway", "Gateway")):
        for j, h in enumerate(replica_actors(app, dep)):
            with contextlib.suppress(Exception):
                procs[f"{app}/{dep}#{j}"] = actor_pid(h)
    procs.update(_named_actor_pids())
    procs.update(_ray_daemons())
    return procs


def _rss_mb(pids: dict[str, int]) -> dict[str, float | None]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            out[name] = None  # gone
    return out


def run_soak(minutes: float, workdir: Path, generate: bool = True, sample_s: float = 60.0,
             log: Callable[[str], None] = print) -> dict:
    from common.config import RayConfig
    from dyref.local import init_ray
    init_ray(RayConfig(num_cpus=3, object_store_memory_mb=128))
    requests = {"ok": 0, "errors": 0}
    with own_redis(workdir, maxmemory_mb=512) as server:
        cfg = chaos_cfg(server.url, workdir, rl={"checkpoint_every": 10})
        stop = threading.Event()
        url = None
        if generate:
            from services.gateway.deployments import start_gateway
            port = free_port()
            start_gateway(cfg.gateway, cfg.policy, cfg.redis, server.url, port=port)
            url = f"http://127.0.0.1:{port}"

            def client():
                import httpx
                with httpx.Client(timeout=120) as h:
                    while not stop.is_set():
                        try:
                            resp = h.post(f"{url}/v1/generations", json={"prompt": "a red square on grey",
                                                                        "num_inference_steps": 2, "width": 32,
                                                                        "height": 32})
                            requests["ok" if resp.status_code == 200 else "errors"] += 1
                        except Exception:  # noqa: BLE001 - counted, the soak goes on
                            requests["errors"] += 1
                            time.sleep(0.5)
            import httpx
            wait_until(lambda: _ok(httpx, f"{url}/readyz"), 180, 0.5)
        loop = Loop(cfg, server.url, generators=1)
        if generate:
            threading.Thread(target=client, daemon=True).start()
        r = connect(server.url)
        loop.train(2)  # warm-up: every process has built its model
        pids = stack_processes(loop, server.proc.pid if server.proc else None)
        start_rss, start_used = _rss_mb(pids), int(r.info("memory")["used_memory"])
        samples = [{"t_min": 0.0, "redis_used_mb": start_used / 2**20, "rss_total_mb": sum(v or 0 for v in start_rss.values())}]
        log(f"soak: {len(pids)} processes, Redis used {start_used / 2**20:.1f} MiB; running {minutes:.1f} min")
        t0 = time.monotonic()
        end = t0 + minutes * 60
        while time.monotonic() < end:
            loop.train(10**6, timeout_s=min(sample_s, end - time.monotonic()))
            rss = _rss_mb(pids)
            used = int(r.info("memory")["used_memory"])
            samples.append({"t_min": round((time.monotonic() - t0) / 60, 2), "redis_used_mb": round(used / 2**20, 2),
                            "rss_total_mb": round(sum(v or 0 for v in rss.values()), 1)})
            log(f"  t={samples[-1]['t_min']:.1f} min step {loop.recipe.state.step} redis {used / 2**20:.1f} MiB "
                f"rss total {samples[-1]['rss_total_mb']:.0f} MiB requests {requests}")
        stop.set()
        end_rss, end_used = _rss_mb(pids), int(r.info("memory")["used_memory"])
        steps = loop.recipe.state.step
        loop.stop()
        lost, dup, audit, _checks = ledger(r, Keys(cfg.redis.namespace), cfg, steps)
        r.close()
        if generate:
            with contextlib.suppress(Exception):
                from ray import serve
                serve.delete("gateway")
    dead = [n for n, v in end_rss.items() if v is None]
    procs = [{"name": n, "pid": pids[n], "start_mb": start_rss[n] or 0.0, "end_mb": end_rss[n] or 0.0}
             for n in pids]
    return {"ok": not dead and lost == 0 and dup == 0, "minutes": (time.monotonic() - t0) / 60, "steps": steps,
            "requests": requests["ok"] + requests["errors"], "requests_ok": requests["ok"],
            "requests_failed": requests["errors"], "redis_used_mb_start": round(start_used / 2**20, 2),
            "redis_used_mb_end": round(end_used / 2**20, 2), "dead_processes": dead, "lost": lost,
            "duplicated": dup, "audit": audit, "samples": samples, "processes": procs}


def _ok(httpx, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
