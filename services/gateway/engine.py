"""GeneratorCore: the policy behind the gateway, with verified weight switching between batches.

Plain Python (no Ray): the Serve deployment in :mod:`services.gateway.deployments` wraps it, and
tests or the load script can drive it directly. Invariants:

- one pipeline call at a time: ``run_batch`` holds ``self.lock`` for the whole batch (diffusers
  pipelines and peft adapters are not safe to run concurrently);
- weights switch only between batches: ``sync_weights`` runs at the start of ``run_batch``, under
  the lock, so every request of a batch is served by one version, which it reports;
- the weight store is read only when there is news (the store's pub/sub notice, or the fallback
  check every ``redis.weights_poll_s``), not on every batch; a version whose bytes fail their
  sha256 or do not fit the policy is refused and counted in ``WEIGHT_LOAD_FAILURES``, the old one
  stays (:class:`common.policy.follower.WeightFollower`, shared with the generator).
"""
from __future__ import annotations

import logging
import os
import threading
import time

from common import metrics as M
from common.config import PolicyConfig, RedisConfig
from common.images import encode_image
from services.gateway.prepare import GenJob, GenResult

__all__ = ["GeneratorCore"]

log = logging.getLogger(__name__)


class GeneratorCore:
    def __init__(self, policy_cfg: PolicyConfig, redis_url: str | None, redis_cfg: RedisConfig | None = None,
                 name: str = "gateway"):
        self.policy_cfg = policy_cfg
        self.name = f"{name}-{os.getpid()}"
        self.lock = threading.Lock()
        self.policy = None
        self.load_error: str | None = None
        self.follower = None  # a WeightFollower once the policy is built, when there is a Redis
        self.images = 0
        self.batches = 0
        self.store = None
        self.weights_poll_s = 1.0
        self.probe_tolerance = RedisConfig.model_fields["weights_probe_tolerance"].default
        if redis_url:
            from common.transport import Keys, WeightStore, connect
            rc = redis_cfg or RedisConfig(url=redis_url)
            # few retries: a Redis outage must not stall serving, it only delays the next switch
            quick = rc.model_copy(update={"url": redis_url, "retries": 1, "socket_timeout_s": min(rc.socket_timeout_s, 2.0)})
            self.store = WeightStore(connect(redis_url, quick), Keys(rc.namespace), keep=rc.weights_keep)
            self.weights_poll_s = rc.weights_poll_s
            self.probe_tolerance = rc.weights_probe_tolerance

    @property
    def ready(self) -> bool:
        return self.policy is not None

    # the follower's state, read by stats() and the tests; empty until the policy is built
    @property
    def version(self) -> int | None:
        return self.follower.version if self.follower is not None else None

    @property
    def refused(self) -> set[int]:
        return self.follower.refused if self.follower is not None else set()

    @property
    def failures(self) -> dict[str, int]:
        return self.follower.failures if self.follower is not None else {}

    def load(self) -> None:
        """Build the policy and load the newest published weights. Errors are kept, not raised:
        the deployment stays up and answers 503 with the reason."""
        try:
            from common.policy import build_policy
            from common.policy.follower import WeightFollower
            with self.lock:
                policy = build_policy(self.policy_cfg)
                policy.eval()
                if self.store is not None:
                    self.follower = WeightFollower(self.store, policy.load_trainable_state, consumer=self.name,
                                                   service="gateway", poll_interval_s=self.weights_poll_s,
                                                   probe=policy.probe, probe_tolerance=self.probe_tolerance)
                self.policy = policy
                self.sync_weights(force=True)
        except Exception as e:  # noqa: BLE001 - reported by ready()/stats(), answered as 503
            log.exception("gateway generator: policy failed to load")
            self.load_error = f"{type(e).__name__}: {e}"

    # ---- weights ---------------------------------------------------------------------------------
    def sync_weights(self, force: bool = False) -> int | None:
        """Switch to the newest published version if there is news of one and it verifies; `force`
        reads the store even without news. Call under ``self.lock``. Never raises for Redis: an
        outage keeps the current version serving."""
        if self.follower is None or self.policy is None:
            return self.version
        return self.follower.poll() if force else self.follower.poll_if_due()

    def not_ready(self) -> GenResult:
        msg = "no model ready: " + (self.load_error or "the policy is still loading")
        return GenResult(error=(503, "model_not_ready", msg, None))

    # ---- generation ------------------------------------------------------------------------------
    def run_batch(self, jobs: list[GenJob]) -> list[GenResult]:
        """Serve `jobs` in order of their batch key, under one lock and one weight version."""
        if self.policy is None:
            return [self.not_ready() for _ in jobs]
        out: list[GenResult | None] = [None] * len(jobs)
        order = sorted(range(len(jobs)), key=lambda i: jobs[i].batch_key())
        with self.lock:
            t_sync = time.perf_counter()
            self.sync_weights()
            sync_s = time.perf_counter() - t_sync
            self.batches += 1
            for i in order:
                out[i] = self._run_one(jobs[i], len(jobs), sync_s)
        return out  # type: ignore[return-value]

    def _run_one(self, job: GenJob, batch_size: int, sync_s: float) -> GenResult:
        from PIL import Image

        from common.policy import CompiledReferences, SamplingError
        t0 = time.perf_counter()
        queue_s = max(0.0, time.time() - job.received_at)
        refs = CompiledReferences(roles=[r for r, _, _ in job.refs], images=[Image.fromarray(a) for _, a, _ in job.refs],
                                  descriptions=[d for _, _, d in job.refs])
        try:
            arrays = self.policy.generate(job.prompt, refs, n=job.n, height=job.height, width=job.width,
                                          num_inference_steps=job.steps, guidance_scale=job.guidance,
                                          negative_prompt=job.negative_prompt, seed=job.seed, output_type="np")
        except (SamplingError, ValueError) as e:
            return GenResult(error=(400, "invalid_request", str(e), None), policy_version=self.version)
        except Exception as e:  # noqa: BLE001 - one failing request must not fail its batch
            log.exception("generation failed")
            return GenResult(error=(500, "generation_failed", f"generation failed: {type(e).__name__}", None),
                             policy_version=self.version)
        t1 = time.perf_counter()
        images = [encode_image(Image.fromarray(a), job.output_format) for a in arrays]
        t2 = time.perf_counter()
        self.images += len(images)
        M.PHASE_SECONDS.labels("gateway", "sample").observe(t1 - t0)
        return GenResult(images=images, width=job.width, height=job.height, seed=job.seed,
                         output_format=job.output_format, policy_version=self.version,
                         timings={"queue_s": queue_s, "generate_s": t1 - t0, "encode_s": t2 - t1,
                                  "weights_check_s": sync_s, "batch_size": float(batch_size)})

    def stats(self) -> dict:
        return {"replica": self.name, "ready": self.ready, "load_error": self.load_error, "policy_version": self.version,
                "refused_versions": sorted(self.refused), "weight_load_failures": dict(self.failures),
                "images": self.images, "batches": self.batches}
