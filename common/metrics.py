"""Every Prometheus metric of every DyRef service, declared exactly once.

Names follow `dyref_<service>_<what>_<unit>`; the phase label takes the one name of each phase
(sample, score, publish, consume, update, sync) used for timers, metric labels and logs alike.
A service imports the metrics it sets and calls :func:`serve_metrics` once to expose them.
"""
from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "PHASES", "serve_metrics", "REGISTRY",
    # learner
    "REWARD_MEAN", "REWARD_STD", "REWARD_BY_NREFS", "ZERO_STD_FRACTION", "ADVANTAGE", "DAR_WEIGHT",
    "KL", "CLIP_FRACTION", "RATIO", "LOSS", "LEARNER_STEP", "POLICY_VERSION_PUBLISHED", "GROUPS_CONSUMED",
    "GROUPS_DROPPED", "GROUPS_DUPLICATE", "TASKS_ADMITTED", "TASKS_IN_FLIGHT", "GROUP_LAG", "AUDIT",
    "TRAINER_RESTARTS", "TRAINER_WORKER_SECONDS",
    # generator
    "POLICY_VERSION_SERVED", "GROUPS_PUBLISHED", "IMAGES_GENERATED", "WEIGHT_SYNC_SECONDS",
    "WEIGHT_LOAD_FAILURES", "PHASE_SECONDS",
    # transport
    "QUEUE_DEPTH", "QUEUE_PENDING", "DEAD_LETTERS", "RECLAIMED", "REDIS_RECONNECTS", "REDIS_OOM",
    # reward
    "REWARD_LATENCY", "REWARD_ERRORS", "REWARD_MISSING", "REWARD_BATCH_SIZE",
    # evaluator
    "EVAL_SCORE", "EVAL_VERSION",
    # gateway
    "GATEWAY_REQUESTS", "GATEWAY_LATENCY", "GATEWAY_QUEUE", "GATEWAY_IMAGES",
]

PHASES = ("sample", "score", "publish", "consume", "update", "sync", "evaluate")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# ---- learner ---------------------------------------------------------------------------------
REWARD_MEAN = Gauge("dyref_learner_reward_mean", "Mean raw reward of the last step's groups", ["reward"])
REWARD_STD = Gauge("dyref_learner_reward_std", "Std of the raw reward over the last step's samples", ["reward"])
REWARD_BY_NREFS = Gauge("dyref_learner_reward_by_nrefs", "Mean raw reward of the last step by reference count", ["reward", "n_refs"])
ZERO_STD_FRACTION = Gauge("dyref_learner_zero_std_group_fraction", "Fraction of groups whose combined reward has zero std")
ADVANTAGE = Gauge("dyref_learner_advantage", "Advantage statistics of the last step", ["stat"])
DAR_WEIGHT = Gauge("dyref_learner_dar_weight", "DAR group-weight statistics of the last step", ["stat"])
KL = Gauge("dyref_learner_kl", "Mean KL penalty term of the last step")
CLIP_FRACTION = Gauge("dyref_learner_clip_fraction", "Fraction of samples with a clipped ratio", ["side"])
RATIO = Gauge("dyref_learner_ratio", "Importance-ratio statistics of the last step", ["stat"])
LOSS = Gauge("dyref_learner_loss", "Loss terms of the last step", ["term"])
LEARNER_STEP = Gauge("dyref_learner_step", "Optimizer steps taken")
POLICY_VERSION_PUBLISHED = Gauge("dyref_learner_policy_version", "Newest published policy version")
GROUPS_CONSUMED = Counter("dyref_learner_groups_consumed", "Groups used by an update")
GROUPS_DROPPED = Counter("dyref_learner_groups_dropped", "Groups dropped, by reason", ["reason"])
GROUPS_DUPLICATE = Counter("dyref_learner_groups_duplicate", "Redelivered groups recognised by id and not counted again")
TASKS_ADMITTED = Counter("dyref_learner_tasks_admitted", "Tasks admitted onto the task stream")
TASKS_IN_FLIGHT = Gauge("dyref_learner_tasks_in_flight", "Admitted tasks not yet consumed, dropped or dead-lettered")
GROUP_LAG = Histogram("dyref_learner_group_version_lag", "Policy-version lag of consumed groups", buckets=(0, 1, 2, 3, 5, 8))
TRAINER_RESTARTS = Counter("dyref_learner_trainer_restarts", "Times the trainer workers were lost and resumed from the last checkpoint")
TRAINER_WORKER_SECONDS = Histogram("dyref_learner_worker_seconds", "Seconds a trainer worker spent on a call (update: its shard of a step; state: gathering the weights to publish; save/load: its checkpoint shard)", ["worker", "call"], buckets=_LATENCY_BUCKETS)
AUDIT = Gauge("dyref_audit_tasks", "Accounting audit: tasks by outcome", ["outcome"])

# ---- generator -------------------------------------------------------------------------------
POLICY_VERSION_SERVED = Gauge("dyref_generator_policy_version", "Policy version a generator serves", ["generator"])
GROUPS_PUBLISHED = Counter("dyref_generator_groups_published", "Scored groups published", ["generator"])
IMAGES_GENERATED = Counter("dyref_generator_images", "Images sampled by generators", ["generator"])
WEIGHT_SYNC_SECONDS = Histogram("dyref_weight_sync_seconds", "Publish-to-loaded latency of a weight version", ["consumer"], buckets=_LATENCY_BUCKETS)
WEIGHT_LOAD_FAILURES = Counter("dyref_weight_load_failures", "Weight versions refused (checksum or shape), by reason", ["consumer", "reason"])
PHASE_SECONDS = Histogram("dyref_phase_seconds", "Seconds per phase", ["service", "phase"], buckets=_LATENCY_BUCKETS)

# ---- transport -------------------------------------------------------------------------------
QUEUE_DEPTH = Gauge("dyref_queue_depth", "Entries in a stream", ["stream"])
QUEUE_PENDING = Gauge("dyref_queue_pending", "Entries delivered but not acknowledged", ["stream"])
DEAD_LETTERS = Gauge("dyref_queue_dead_letters", "Entries in a dead-letter stream", ["stream"])
RECLAIMED = Counter("dyref_queue_reclaimed", "Entries reclaimed from dead consumers", ["stream"])
REDIS_RECONNECTS = Counter("dyref_redis_reconnects", "Redis calls that needed a reconnect", ["service"])
REDIS_OOM = Counter("dyref_redis_oom_rejections", "Redis writes refused at maxmemory (noeviction) and backed off", ["op"])

# ---- reward ----------------------------------------------------------------------------------
REWARD_LATENCY = Histogram("dyref_reward_latency_seconds", "Reward call latency seen by the caller", ["scorer"], buckets=_LATENCY_BUCKETS)
REWARD_ERRORS = Counter("dyref_reward_errors", "Failed reward calls, by scorer and reason", ["scorer", "reason"])
REWARD_MISSING = Counter("dyref_reward_missing", "Scores recorded as missing (unparsable, not applicable)", ["scorer"])
REWARD_BATCH_SIZE = Histogram("dyref_reward_batch_size", "Images per batched scorer call", ["scorer"], buckets=(1, 2, 4, 8, 16, 32, 64))

# ---- gateway ---------------------------------------------------------------------------------
GATEWAY_REQUESTS = Counter("dyref_gateway_requests", "HTTP requests by route and status", ["route", "status"])
GATEWAY_LATENCY = Histogram("dyref_gateway_latency_seconds", "Request latency by route", ["route"], buckets=_LATENCY_BUCKETS)
GATEWAY_QUEUE = Gauge("dyref_gateway_queue", "Generation requests waiting or running")
GATEWAY_IMAGES = Counter("dyref_gateway_images", "Images served")

# ---- evaluator -------------------------------------------------------------------------------
EVAL_SCORE = Gauge("dyref_eval_score", "Held-out score of the newest evaluated policy version, by metric and reference count", ["metric", "n_refs"])
EVAL_VERSION = Gauge("dyref_eval_policy_version", "Policy version the held-out scores belong to")

_started: dict[int, object] = {}
_lock = threading.Lock()


def serve_metrics(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> int:
    """Expose metrics on http://addr:port/metrics once per process; port 0 picks a free port."""
    with _lock:
        if port in _started and port:
            return port
        server, _thread = start_http_server(port, addr=addr, registry=registry)
        bound = server.server_address[1]
        _started[bound] = server
        return bound
