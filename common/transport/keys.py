"""Every Redis key DyRef uses is built here: ``<namespace>:<kind>:<id>`` (docs/architecture.md, Conventions)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    namespace: str = "dyref"

    def _k(self, *parts: object) -> str:
        return ":".join([self.namespace, *map(str, parts)])

    # streams and their dead-letter twins
    def stream(self, name: str) -> str:
        return self._k("stream", name)

    def dead_letter(self, name: str) -> str:
        return self._k("dlq", name)

    @property
    def tasks(self) -> str:
        return self.stream("tasks")

    @property
    def groups(self) -> str:
        return self.stream("groups")

    # payloads
    def blob(self, kind: str, ident: str) -> str:
        return self._k("blob", kind, ident)

    def consumed(self, group_id: str) -> str:
        return self._k("consumed", group_id)

    # weights
    def weights(self, version: int, chunk: int = 0) -> str:
        return self._k("weights", "v", version, chunk)

    def weights_meta(self, version: int) -> str:
        return self._k("weights", "meta", version)

    @property
    def weights_latest(self) -> str:
        return self._k("weights", "latest")

    @property
    def weights_channel(self) -> str:
        return self._k("weights", "published")

    @property
    def eval_history(self) -> str:
        return self._k("eval", "history")

    # counters, jobs, health
    @property
    def audit(self) -> str:
        return self._k("audit")

    @property
    def step_groups(self) -> str:
        """Hash: learner step -> the groups that step trained on, kept until a checkpoint holds the step."""
        return self._k("audit", "steps")

    def job(self, job_id: str) -> str:
        return self._k("job", job_id)

    def heartbeat(self, service: str, ident: str) -> str:
        return self._k("heartbeat", service, ident)
