"""The evaluator as a Ray actor, at low CPU priority: it takes what the learner and generators leave."""
from __future__ import annotations

import os

import ray

from common.config import DyRefConfig
from common.loop_actor import LoopActor
from common.transport.direct import DirectLink, WeightReceiver

__all__ = ["EvaluatorActor", "start_evaluator"]


# one thread runs the loop, one answers stop/status, one receives weights on the direct path
@ray.remote(max_concurrency=3)
class EvaluatorActor(LoopActor, WeightReceiver):
    def __init__(self, cfg: dict, redis_url: str, specs: list[dict], size: int, ref_size: int, every: int,
                 steps: int | None = None, metrics_port: int = 0, nice: int = 10):
        import torch
        torch.set_num_threads(1)
        os.nice(nice)
        self.cfg = DyRefConfig.from_dict(cfg)
        if metrics_port:
            from common.metrics import serve_metrics
            serve_metrics(metrics_port, addr=self.cfg.metrics_host)
        from common.synthetic import CaseSpec, case_from_spec
        from services.evaluator.worker import EvaluatorWorker
        cases = [case_from_spec(CaseSpec.from_dict(s["spec"]), s["index"], s["case_id"], size, ref_size) for s in specs]
        self.worker = EvaluatorWorker(self.cfg, redis_url, cases, every, steps,
                                      direct=DirectLink(receiver=ray.get_runtime_context().current_actor))

    def status(self) -> dict:
        return {"last_version": self.worker.last, "evaluations": self.worker.evaluated}


def start_evaluator(cfg: DyRefConfig, redis_url: str, cases, every: int, steps: int | None = None,
                    name: str = "evaluator"):
    """Start the evaluator on ``cases`` (SyntheticCases; sent as specs and re-rendered in the actor).
    Returns (actor, run ObjectRef)."""
    specs = [{"spec": c.spec.to_dict(), "index": c.index, "case_id": c.case_id} for c in cases]
    port = cfg.metrics_port + 1 + cfg.rl.num_generators if cfg.metrics_port else 0
    a = EvaluatorActor.options(name=name, num_cpus=0).remote(
        cfg.model_dump(mode="json"), redis_url, specs, cases[0].size, cases[0].metadata["ref_size"], every, steps,
        metrics_port=port)
    return a, a.run.remote()
