"""Pure RL pieces of the learner: advantages, DRS, DAR, their composition, KL, PPO loss, staleness, EMA.

Everything here takes arrays and returns arrays (no I/O, no global config); builders pass the
fields of the config sections, or use the ``apply_*`` / ``from_config`` wrappers.
"""
from .advantages import gdpo_advantages, group_normalize, grpo_advantages, zero_std_fraction
from .dar import apply_dar, dar_weights, group_difficulty, scale_clip_to_unit_mean
from .drs import apply_drs, calibrate_tau, drs_reward, drs_slope
from .ema import EMA, ema_decay
from .kl import KL_KINDS, kl_penalty
from .loss import LossStats, batch_diagnostics, ppo_loss
from .signals import BatchSignals, batch_signals, reward_tensors
from .staleness import admission_capacity, is_stale, version_lag

__all__ = [
    "grpo_advantages", "gdpo_advantages", "group_normalize", "zero_std_fraction",
    "drs_slope", "drs_reward", "apply_drs", "calibrate_tau",
    "dar_weights", "apply_dar", "group_difficulty", "scale_clip_to_unit_mean",
    "kl_penalty", "KL_KINDS",
    "ppo_loss", "LossStats", "batch_diagnostics",
    "batch_signals", "reward_tensors", "BatchSignals",
    "admission_capacity", "version_lag", "is_stale",
    "EMA", "ema_decay",
]
