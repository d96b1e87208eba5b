"""Off-policy staleness rules of the asynchronous learner.

A group sampled with policy version v_g is consumed by the learner at version v. Its lag is
v − v_g; it is used only if lag ≤ max_staleness, otherwise dropped (and counted). To keep the
generators from producing groups that will be dropped, at most
``(max_staleness + 1) · groups_per_step`` groups may be in flight (sampled but not consumed):
with max_staleness 0 that is exactly one learner step's worth (fully on-policy).
"""
from __future__ import annotations

__all__ = ["admission_capacity", "version_lag", "is_stale"]


def _nonneg_int(x: int, name: str) -> int:
    if isinstance(x, bool) or int(x) != x or x < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {x!r}")
    return int(x)


def admission_capacity(max_staleness: int, groups_per_step: int) -> int:
    """Most groups that may be in flight: (max_staleness + 1) · groups_per_step."""
    s = _nonneg_int(max_staleness, "max_staleness")
    g = _nonneg_int(groups_per_step, "groups_per_step")
    if g == 0:
        raise ValueError("groups_per_step: must be >= 1")
    return (s + 1) * g


def version_lag(current_version: int, group_version: int) -> int:
    """current_version − group_version. A group from a future version is an error (a bug upstream)."""
    cur = _nonneg_int(current_version, "current_version")
    grp = _nonneg_int(group_version, "group_version")
    if grp > cur:
        raise ValueError(f"group_version {grp} is newer than the learner's version {cur}")
    return cur - grp


def is_stale(current_version: int, group_version: int, max_staleness: int) -> bool:
    """True when the group must be dropped: version_lag > max_staleness."""
    return version_lag(current_version, group_version) > _nonneg_int(max_staleness, "max_staleness")
