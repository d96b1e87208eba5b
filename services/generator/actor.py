"""The generator as a Ray actor (one per GPU in the gpu profile, on the CPU in cpu-tiny)."""
from __future__ import annotations

import ray

from common.config import DyRefConfig
from common.placement import role_resources
from common.loop_actor import LoopActor
from common.transport.direct import DirectLink, WeightReceiver

__all__ = ["GeneratorActor", "start_generators"]


# one thread runs the loop, one answers stop/status, one receives weights on the direct path
@ray.remote(max_concurrency=3)
class GeneratorActor(LoopActor, WeightReceiver):
    def __init__(self, generator_id: str, cfg: dict, redis_url: str, threads: int = 1, metrics_port: int = 0):
        import torch
        torch.set_num_threads(threads)
        if metrics_port:  # each actor is its own process with its own registry to scrape
            from common.metrics import serve_metrics
            serve_metrics(metrics_port, addr=DyRefConfig.from_dict(cfg).metrics_host)
        from services.generator.worker import GeneratorWorker
        from common.rewards.client import RewardClient
        self.cfg = DyRefConfig.from_dict(cfg)
        self.worker = GeneratorWorker(generator_id, self.cfg, redis_url, RewardClient(self.cfg.rewards),
                                      direct=DirectLink(receiver=ray.get_runtime_context().current_actor))

    def status(self) -> dict:
        import os
        return {"id": self.worker.id, "version": self.worker.version, "groups": self.worker.groups_done,
                "refused_versions": sorted(self.worker.refused_versions), "pid": os.getpid(),
                "weight_failures": {k: v for k, v in self.worker.follower.failures.items() if v}}


def start_generators(cfg: DyRefConfig, redis_url: str, n: int | None = None, prefix: str = "generator",
                     num_cpus: float = 1.0, num_gpus: float = 0.0):
    """Start `n` generator actors and their loops; returns [(actor, run ObjectRef)].

    A generator is disposable: if its process dies (kill -9, OOM) Ray restarts the actor (up to
    ``rl.generator_max_restarts`` times) and retries its ``run`` call on the new process, so the
    loop goes on under the same consumer name. The new process first finishes the task the dead
    one held (its own leftovers, services/generator/worker.py ``next_entry``); another generator
    takes it over after ``redis.claim_idle_ms`` if the actor does not come back. Its group is
    published once."""
    n = n or cfg.rl.num_generators
    dumped = cfg.model_dump(mode="json")
    out = []
    for i in range(n):
        a = GeneratorActor.options(name=f"{prefix}-{i}", num_cpus=num_cpus, num_gpus=num_gpus,
                                   resources=role_resources("generator"),   # the generator node, if any
                                   max_restarts=cfg.rl.generator_max_restarts,
                                   max_task_retries=-1 if cfg.rl.generator_max_restarts else 0).remote(f"{prefix}-{i}", dumped, redis_url, threads=cfg.rl.generator_threads,
                                                          metrics_port=cfg.metrics_port + 1 + i if cfg.metrics_port else 0)
        out.append((a, a.run.remote()))
    return out
