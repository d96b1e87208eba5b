"""The reward service's client (what a generator calls): one async call per reward component, with
retries. The service's address on Ray Serve (its application and deployment names) is defined here,
the one place both sides read it: services/reward/app.py deploys under these names."""
from __future__ import annotations

import logging
import math
import time

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from common import metrics as M
from common.config import RewardComponent, RewardsConfig
from common.schemas import ScoreRequest, Task, group_id_for
__all__ = ["RewardClient", "comparison_images", "RewardCallError", "clean_table", "APP_NAME", "deployment_name"]

APP_NAME = "rewards"


def deployment_name(scorer: str) -> str:
    """The Serve deployment that runs one scorer."""
    return f"scorer-{scorer}"

log = logging.getLogger("dyref.reward.client")


def clean_table(scores, g: int) -> tuple[list[list[float | None]], int]:
    """A scorer's answer -> a valid [G][J] table and how many cells were garbage (-> None = missing).

    A table with the wrong number of rows or ragged rows cannot be attributed to images: every
    cell of the group becomes missing ([G][1] of None). Non-numeric or non-finite cells become None.
    The learner treats None as missing (no advantage from it), never as a score of 0.
    """
    rows = list(scores) if isinstance(scores, (list, tuple)) else None
    widths = {len(r) for r in rows if isinstance(r, (list, tuple))} if rows is not None else set()
    if rows is None or len(rows) != g or len(widths) != 1 or not all(isinstance(r, (list, tuple)) for r in rows) \
            or 0 in widths:
        return [[None] for _ in range(g)], g
    out, bad = [], 0
    for r in rows:
        row = []
        for v in r:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            bad += v is not None and not ok
            row.append(float(v) if ok else None)
        out.append(row)
    return out, bad


class RewardCallError(RuntimeError):
    """A reward deployment failed on every retry."""


def comparison_images(component: RewardComponent, task: Task) -> tuple[bytes, ...] | None:
    """What a component compares with for this task; None when it does not apply to it."""
    if component.scorer == "references" and component.against == "target":
        return (task.target,) if task.target is not None else None
    if component.scorer == "references":
        # the scorer reads the task's references itself: it applies when one has a scored role
        roles = component.roles
        return () if any(roles is None or r.role in roles for r in task.references) else None
    if component.against == "none":
        return ()
    if component.against == "target":
        return (task.target,) if task.target is not None else None
    imgs = tuple(r.image for r in task.references if r.role == component.against)
    return imgs or None


class RewardClient:
    """`client(task, pngs) -> {component name: [G][J] raw scores (None = missing) or None}`."""

    def __init__(self, cfg: RewardsConfig, handles: dict | None = None):
        self.cfg = cfg
        if handles is None:
            from ray import serve
            handles = {c.scorer: serve.get_deployment_handle(deployment_name(c.scorer), app_name=APP_NAME)
                       for c in cfg.components}
        self.handles = handles
        for c in cfg.components:  # exported as 0 until something goes wrong
            M.REWARD_MISSING.labels(c.scorer)
            M.REWARD_LATENCY.labels(c.scorer)
            M.REWARD_BATCH_SIZE.labels(c.scorer)
            for reason in ("TimeoutError", "RayTaskError", "RewardCallError"):
                M.REWARD_ERRORS.labels(c.scorer, reason)

    def __call__(self, task: Task, pngs: list[bytes]) -> dict[str, list | None]:
        return self.collect(self.submit(task, pngs))

    def submit(self, task: Task, pngs: list[bytes]) -> tuple[dict, dict]:
        """Send every applicable component's request now; :meth:`collect` waits for the answers.

        Splitting the two lets a generator sample its next group while this one is scored.
        """
        gid = group_id_for(task.task_id, task.policy_version)
        calls, out = {}, {}
        for c in self.cfg.components:
            against = comparison_images(c, task)
            if against is None:
                out[c.name] = None
                continue
            req = ScoreRequest(group_id=gid, images=tuple(pngs), against=against, prompt=task.prompt,
                               references=task.references, n_refs=task.n_refs,
                               roles=tuple(c.roles) if c.roles is not None else None)
            calls[c.name] = (c.scorer, req, time.perf_counter(), self.handles[c.scorer].score.remote(req))
        return calls, out

    def collect(self, submitted: tuple[dict, dict]) -> dict[str, list | None]:
        calls, out = submitted
        for name, (scorer, req, t0, pending) in calls.items():
            resp = self._result(scorer, req, pending)
            table, garbage = clean_table(resp.scores, len(req.images))
            out[name] = table
            M.REWARD_LATENCY.labels(scorer).observe(time.perf_counter() - t0)
            M.REWARD_BATCH_SIZE.labels(scorer).observe(resp.batch_images)
            if garbage:
                M.REWARD_ERRORS.labels(scorer, "garbage").inc()
                log.warning("reward %r answered %d invalid scores for group %s: recorded as missing",
                            name, garbage, req.group_id)
            missing = sum(v is None for row in table for v in row)
            if missing:
                M.REWARD_MISSING.labels(scorer).inc(missing)
        return out

    def _result(self, scorer: str, req: ScoreRequest, first):
        attempt = {"n": 0}

        def call():
            attempt["n"] += 1
            fut = first if attempt["n"] == 1 else self.handles[scorer].score.remote(req)
            try:
                return fut.result(timeout_s=self.cfg.timeout_s)
            except Exception as e:
                M.REWARD_ERRORS.labels(scorer, type(e).__name__).inc()
                raise
        try:
            for a in Retrying(stop=stop_after_attempt(self.cfg.retries + 1), reraise=True,
                              wait=wait_exponential_jitter(initial=0.2, max=5.0),
                              retry=retry_if_exception_type(Exception)):
                with a:
                    return call()
        except Exception as e:
            raise RewardCallError(f"reward {scorer!r} failed after {attempt['n']} tries: {e}") from e
