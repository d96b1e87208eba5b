"""The direct weight path: a published version's bytes go from the learner's weight source actor to
each consumer over Ray Direct Transport (RDT), not through Redis (docs/architecture.md, "Weight
sync").

Redis still carries every version's metadata (sha256, probe, the source actor's name) and the
`latest` pointer: ordering, the checksum and the probe are the same as on the Redis path
(common/transport/weights.py, common/policy/follower.py); only where the bytes come from differs.
So Redis no longer has to hold ``weights_keep`` copies of the weights, and a consumer on another
node reads them from the source actor's memory instead of from one Redis server.

How a consumer receives them:
- a Ray actor that mixes in :class:`WeightReceiver` and has a spare thread (the generator and the
  evaluator) joins a two-member gloo group with the source on its first fetch; RDT then moves the
  tensor over that group into one of the consumer's own actor methods (two-sided transports deliver
  tensors only as arguments of an actor task: ``ray.get`` of such an object is refused);
- any other process in the Ray cluster (a Serve replica of the gateway) gets the same bytes
  through Ray's object store.

The transport moves the published bytes (the codec's serialised trainable state) as one uint8
tensor, so the consumer verifies exactly the sha256 the learner published and loads them with the
same code as the Redis path. On GPUs the same source would use NCCL or NIXL on device tensors; that
is not built here (no GPU to test it on), see docs/operations.md.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import uuid

import ray
import torch

from common.schemas import WeightVersion
from common.transport.weights import ChecksumError, WeightsMissing

__all__ = ["WeightSource", "WeightRelay", "WeightReceiver", "DirectLink", "SourceUnavailable", "start_weight_source",
           "source_name"]

log = logging.getLogger(__name__)

_INBOX: dict[str, torch.Tensor] = {}   # tensors delivered to this process by receive_weights, by key
_INBOX_LOCK = threading.Lock()


class SourceUnavailable(ConnectionError):
    """The weight source is gone or the transfer failed: keep serving, try again later."""


def source_name(namespace: str) -> str:
    """The source actor's name: one per Redis namespace, as one learner publishes to one namespace."""
    return f"dyref-weights-{namespace}"


class WeightSource:
    """Holds the last ``keep`` published versions' bytes for consumers to fetch (the learner's Ray
    actor; several threads, so transfers to different consumers and a new ``put`` overlap)."""

    def __init__(self, keep: int):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.keep = keep
        self.versions: dict[int, torch.Tensor] = {}

    def put(self, version: int, data: bytes) -> int:
        self.versions[version] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        for v in sorted(self.versions)[:-self.keep]:
            del self.versions[v]
        return len(data)

    def held(self) -> list[int]:
        return sorted(self.versions)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def _get(self, version: int) -> torch.Tensor:
        try:
            return self.versions[version]
        except KeyError:
            raise WeightsMissing(f"weight version {version} is no longer held by the weight source "
                                 f"(keep={self.keep})") from None

    def get(self, version: int) -> torch.Tensor:
        """Through Ray's object store: to a relay beside it, or to a consumer with no relay."""
        return self._get(version)


def start_weight_source(namespace: str, keep: int, resources: dict | None = None):
    """The source actor for `namespace`: created by the learner, or the one already running (a
    learner restarted in the same Ray cluster takes it over; versions only grow, so what it holds
    is never confused with a new version)."""
    actor = ray.remote(WeightSource).options(
        name=source_name(namespace), get_if_exists=True, max_concurrency=8, num_cpus=0,
        resources=resources or {})
    return actor.remote(keep)


class WeightReceiver:
    """Mixin for a consumer's Ray actor class (created with a spare thread: max_concurrency >= 3
    for a loop actor): the method the gloo transfer delivers the tensor to."""

    def receive_weights(self, key: str, data: torch.Tensor) -> int:
        with _INBOX_LOCK:
            _INBOX[key] = data
        return int(data.numel())


class WeightRelay:
    """One consumer's sender, placed beside the source: it reads a version from the source through
    the object store and sends it to its consumer over their gloo group.

    Why a relay and not the source itself: Ray's torch gloo groups (2.60) build on the process's
    default torch.distributed group, so a process can be in one gloo group only. The source serves
    many consumers that come and go; each consumer and its relay form a group of two that lives as
    long as the consumer (the relay is the consumer's actor: it dies with it), and a restarted
    learner's new source is found by name on the next fetch."""

    def __init__(self, source: str):
        self.source = source

    def ping(self) -> bool:
        return True

    @ray.method(tensor_transport="gloo")
    def get_gloo(self, version: int) -> torch.Tensor:
        return ray.get(ray.get_actor(self.source).get.remote(version))


class DirectLink:
    """One consumer's end of the direct path: ``fetch(wv)`` returns the bytes of a version whose
    metadata says ``transport == "direct"``, verified against its sha256.

    `receiver` is this process's own actor handle (a :class:`WeightReceiver`): the bytes then come
    over gloo from this consumer's :class:`WeightRelay`; None fetches from the source through the
    object store. Raises WeightsMissing (the source no longer holds the version), ChecksumError
    (bytes that do not match), SourceUnavailable (no source, or the transfer failed; the next fetch
    tries again). A relay that died cannot be replaced (this process's one gloo group was with it):
    the link then reads through the object store, and says so."""

    def __init__(self, receiver=None, timeout_s: float = 120.0):
        self.receiver, self.timeout_s = receiver, timeout_s
        self.relay = None

    @property
    def transport(self) -> str:
        return "object_store" if self.receiver is None else "gloo"

    def fetch(self, wv: WeightVersion) -> bytes:
        if not wv.source:
            raise SourceUnavailable(f"weight version {wv.version} names no weight source")
        if not ray.is_initialized():
            raise SourceUnavailable(f"weight version {wv.version} is on the direct path, which needs this "
                                    "process in the learner's Ray cluster")
        try:
            if self.receiver is None:
                tensor = ray.get(ray.get_actor(wv.source).get.remote(wv.version), timeout=self.timeout_s)
            else:
                relay = self._relay(wv.source)
                key = uuid.uuid4().hex
                try:
                    ray.get(self.receiver.receive_weights.remote(key, relay.get_gloo.remote(wv.version)),
                            timeout=self.timeout_s)
                except ray.exceptions.RayError:
                    with _INBOX_LOCK:
                        _INBOX.pop(key, None)   # delivered after all, too late: not kept
                    self._check_relay()
                    raise
                with _INBOX_LOCK:
                    tensor = _INBOX.pop(key)
        except WeightsMissing:
            raise
        except (ray.exceptions.RayError, ValueError) as e:   # ValueError: no actor of that name
            raise SourceUnavailable(f"weight version {wv.version} from {wv.source}: {type(e).__name__}: "
                                    f"{str(e).splitlines()[-1] if str(e) else ''}") from e
        data = tensor.numpy().tobytes()
        got = hashlib.sha256(data).hexdigest()
        if got != wv.sha256:
            raise ChecksumError(f"weight version {wv.version}: sha256 {got[:12]}… != published {wv.sha256[:12]}…")
        return data

    def _relay(self, source: str):
        """This consumer's relay, made on the first fetch beside the source, in a gloo group with it."""
        if self.relay is not None:
            return self.relay
        from ray.experimental.collective import create_collective_group
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        node = ray.get(ray.get_actor(source).node.remote(), timeout=self.timeout_s)
        relay = ray.remote(WeightRelay).options(
            num_cpus=0, max_concurrency=2, enable_tensor_transport=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(source)
        create_collective_group([relay, self.receiver], backend="torch_gloo",
                                name=f"dyref-weights-{uuid.uuid4().hex[:12]}")
        self.relay = relay
        return relay

    def _check_relay(self) -> None:
        try:
            ray.get(self.relay.ping.remote(), timeout=10)
        except ray.exceptions.RayError as e:
            log.error("the weight relay of this consumer is gone (%s): reading weights through the object "
                      "store from now on", type(e).__name__)
            self.relay, self.receiver = None, None

    def close(self) -> None:
        """End the relay; a later fetch reads through the object store (this process's one gloo
        group was with the relay)."""
        relay, self.relay = self.relay, None
        if relay is not None:
            self.receiver = None
            if ray.is_initialized():
                ray.kill(relay)
