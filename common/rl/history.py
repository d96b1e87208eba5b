"""One naming scheme for what a training step reports: the learner's and the SFT loop's history
records (checkpointed, drawn by the demo report, printed by the CLI). docs/architecture.md, "Names".

    step, version                 bare: where in training the record is
    losses/<name>                 loss terms and their diagnostics (common.rl.loss.LossStats fields),
                                  losses/grad_norm, losses/lr
    reward/<component>/mean|std   raw reward of the step's samples, per reward component
    reward/<component>/n<k>       the same for the groups with k references
    signals/<name>                what the advantage pipeline did: zero_std_frac, dar_weight_*, p_bar_mean, drs_tau
    time/<phase>_s                seconds per step: consume, update (learner); sample, score (generators, per group)
    data/<name>                   counts: images, groups_unscorable, version_lag_mean, n_refs (SFT)
    eval/<metric>/<n_refs|all>    held-out scores (SFT evaluation)

Prometheus metrics follow their own convention (``dyref_<service>_<quantity>`` with labels, common/metrics.py).
"""
from __future__ import annotations

import re

__all__ = ["BARE", "bad_keys"]

BARE = ("step", "version")
_NAME = r"[a-z0-9_]+"
_PATTERNS = {
    "losses": re.compile(rf"losses/{_NAME}"),
    "reward": re.compile(rf"reward/[A-Za-z0-9_.-]+/(mean|std|n\d+)"),
    "signals": re.compile(rf"signals/{_NAME}"),
    "time": re.compile(rf"time/{_NAME}_s"),
    "data": re.compile(rf"data/{_NAME}"),
    "eval": re.compile(rf"eval/{_NAME}/(\d+|all)"),
}


def bad_keys(record: dict) -> list[str]:
    """The keys of `record` that do not follow the scheme (empty when it does)."""
    out = []
    for k in record:
        if k in BARE:
            continue
        section = k.split("/", 1)[0]
        pattern = _PATTERNS.get(section)
        if pattern is None or not pattern.fullmatch(k):
            out.append(k)
    return out
