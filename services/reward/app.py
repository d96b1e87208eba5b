"""Reward workers: one Ray Serve application, one deployment per scorer, dynamically batched.

Each deployment wraps one scorer of common/rewards and answers ``score(ScoreRequest) ->
ScoreResponse`` with RAW values. Requests from many generators are merged by ``@serve.batch`` into
one model call; the torch work runs in a worker thread so the replica's event loop keeps
answering Serve's queue-length probes (docs/measurements.md §4: 7 calls/s on the loop vs ~200/s off it).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ray import serve

from common.config import RewardsConfig
from common.placement import role_resources
from common.rewards.client import APP_NAME, deployment_name
from common.schemas import ScoreRequest, ScoreResponse
from services.reward.scoring import GroupScorer, build_group_scorer

__all__ = ["ScorerDeployment", "reward_app"]


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ScorerDeployment:
    def __init__(self, scorer: str, rewards_cfg: dict, wrap_scorer: Callable[[GroupScorer], GroupScorer] | None = None):
        import torch
        torch.set_num_threads(1)
        cfg = RewardsConfig.model_validate(rewards_cfg)
        self.name = scorer
        self.scorer = build_group_scorer(scorer, cfg)
        if wrap_scorer is not None:  # only the chaos suite wraps it (a scorer that misbehaves on purpose)
            self.scorer = wrap_scorer(self.scorer)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"score-{scorer}")
        self.score.set_max_batch_size(cfg.batch_size)
        self.score.set_batch_wait_timeout_s(cfg.batch_wait_s)

    def _score_sync(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        t0 = time.perf_counter()
        rows = self.scorer(requests)
        dt = time.perf_counter() - t0
        n = sum(len(r.images) for r in requests)
        # replicas report through their answers: the caller (a generator) exports the metrics
        return [ScoreResponse(scorer=self.name, scores=tuple(tuple(row) for row in rs), seconds=dt, batch_images=n)
                for rs in rows]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._score_sync, list(requests))

    async def __call__(self, request: ScoreRequest) -> ScoreResponse:
        return await self.score(request)

    def check_health(self) -> None:
        if self.scorer is None:
            raise RuntimeError("scorer not loaded")


def reward_app(cfg: RewardsConfig, wrap_scorer: Callable[[GroupScorer], GroupScorer] | None = None):
    """One Serve application with a deployment per scorer kind named in `cfg.components`.
    `wrap_scorer` (picklable) wraps every replica's scorer: the chaos suite's fault injection."""
    kinds = sorted({c.scorer for c in cfg.components})
    dumped = cfg.model_dump(mode="json")
    on_node = {"num_cpus": 0, "resources": role_resources("reward")}   # the reward node when there is one
    deps = [ScorerDeployment.options(name=deployment_name(k), num_replicas=cfg.replicas, ray_actor_options=on_node,
                                     max_ongoing_requests=cfg.max_ongoing_requests).bind(k, dumped, wrap_scorer)
            for k in kinds]
    return _Router.options(name="router").bind(*deps, kinds)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class _Router:
    """Ingress of the app (Serve needs one); generators call the scorer deployments directly."""

    def __init__(self, *args):
        *handles, kinds = args
        self.handles = dict(zip(kinds, handles))

    async def __call__(self, request) -> dict:
        return {"scorers": sorted(self.handles)}
