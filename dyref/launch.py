"""Wire the RL services together on one machine: reward app, generator actors, learner.

`dyref train rl` calls :func:`run_rl`. In a cluster the same pieces start one by one against a
shared Redis and Ray (`dyref rewards`, `dyref generator`, `dyref learner`), which is what
docker compose and the Helm chart do.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable

from common.config import DyRefConfig
from services.learner.checkpoint import LearnerState
from services.learner.rl_recipe import RLRecipe
from services.learner.tasks import TaskSource

__all__ = ["start_reward_app", "run_rl", "StopFlag"]

log = logging.getLogger("dyref.launch")


class StopFlag:
    """Set by Ctrl-C (SIGINT/SIGTERM) or by code; polled by every loop between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self, *_args) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()

    @contextmanager
    def on_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self.set) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def start_reward_app(cfg: DyRefConfig, wrap_scorer=None) -> None:
    """Deploy the reward application (one deployment per scorer) on the connected Ray cluster
    (`wrap_scorer`: the chaos suite's fault injection, dyref/chaos/faults.py)."""
    from ray import serve

    from common.rewards.client import APP_NAME
    from common.serving import start_serve
    from services.reward.app import reward_app
    start_serve()   # without an HTTP proxy: it would take the gateway's port (common/serving.py)
    serve.run(reward_app(cfg.rewards, wrap_scorer), name=APP_NAME, route_prefix=None, blocking=False)


def run_rl(cfg: DyRefConfig, redis_url: str, source: TaskSource, steps: int | None = None,
           stop: StopFlag | None = None, on_step: Callable[[dict], None] | None = None,
           generators: int | None = None, eval_cases=None,
           on_ready: Callable[[RLRecipe], None] | None = None) -> tuple[RLRecipe, LearnerState, list[dict]]:
    """Reward app + generator actors (+ the evaluator when ``eval_cases`` are given and
    ``rl.eval_every`` > 0) + the learner loop in this process, on an initialised Ray.

    `steps` is the target total step (default ``rl.total_steps``): a resumed run trains the rest.
    `on_ready(recipe)` is called once the learner is set up (resumed), before the first step: a
    progress bar starts at ``recipe.state.step`` there.

    Returns (recipe, final learner state, generator and evaluator statuses). Actors are stopped and
    their loops joined before returning, whatever happens in the learner.
    """
    import ray

    from services.generator.actor import start_generators
    stop = stop or StopFlag()
    start_reward_app(cfg)
    recipe = RLRecipe(cfg, redis_url, source).setup()  # publishes the starting weights first
    if on_ready:
        on_ready(recipe)
    gens = start_generators(cfg, redis_url, n=generators)
    workers = list(gens)
    if eval_cases and cfg.rl.eval_every:
        from services.evaluator.actor import start_evaluator
        workers.append(start_evaluator(cfg, redis_url, eval_cases, cfg.rl.eval_every))
    statuses: list[dict] = []

    def stop_or_fail() -> bool:
        # a generator loop only returns when told to stop: one that ended has died, and the
        # learner would otherwise wait for groups that never come
        done, _ = ray.wait([ref for _, ref in gens], num_returns=len(gens), timeout=0)
        if done and not stop():
            try:
                ray.get(done[0])
            except Exception as e:
                raise RuntimeError(f"a generator died: {e}") from e
            raise RuntimeError("a generator loop ended without being stopped")
        return stop()
    try:
        if len(workers) > len(gens):
            # the evaluator is built before the first step (status answers after __init__): niced on a
            # busy box, it could otherwise start after a short run ended and score only the last version
            ray.get(workers[-1][0].status.remote(), timeout=300)
        state = recipe.train(until=steps, should_stop=stop_or_fail, on_step=on_step)
    finally:
        recipe.close()  # trainer workers, when there are several; recipe.policy keeps their last weights
        for actor, _ in workers:
            actor.stop.remote()
        for actor, ref in workers:
            try:
                ray.get(ref, timeout=120)
                statuses.append(ray.get(actor.status.remote(), timeout=30))
            except Exception as e:  # a killed actor reports nothing; the audit still accounts for its task
                statuses.append({"error": str(e)})
            ray.kill(actor)
    return recipe, state, statuses


def wait_for(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return pred()
