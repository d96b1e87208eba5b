"""One denoising step of a flow-matching sampler, stochastic or not, with its Gaussian log-prob.

Pure functions, exactly as the paper's released scheduler (docs/algorithm.md §4). Notation:
sigma = current noise level, sigma_next = next, dt = sigma_next - sigma < 0, v = velocity
prediction, eta = noise level, x = latents [B, ...].

| dynamics  | std_dev_t (kl_std_dev_t)               | mean                                                                   |
|-----------|----------------------------------------|------------------------------------------------------------------------|
| flow-sde  | eta * sqrt(sigma / (1 - sigma~))       | x (1 + std^2 dt / (2 sigma)) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt |
| dance-sde | eta * sqrt(-dt)                        | x + (v + 0.5 eta^2 (x - x0 (1 - sigma)) / sigma^2) dt, x0 = x - sigma v   |
| cps       | sigma_next * sin(eta pi / 2)           | (1 - sigma_next) x0 + sqrt(sigma_next^2 - std^2) x1, x1 = x + (1 - sigma) v |
| ode       | 0                                      | x + v dt                                                               |

sigma~ = sigma, except sigma_max (= sigmas[1]) when sigma == 1 (avoids 1/0). The sample is
``mean + s * eps`` with s = std_dev_t * sqrt(-dt) for flow-sde and s = std_dev_t otherwise
(:func:`step_std`): dance-sde's std_dev_t already contains sqrt(-dt). The released v/mean KL
divide by 2 std_dev_t^2 (:func:`kl_std_dev_t`), the exact Gaussian KL by 2 s^2.

The log-prob is a per-element MEAN over all non-batch dims (not a sum), as the reference computes
it, so exp(logp_new - logp_old) is a tempered, per-dimension ratio:
- flow-sde / dance-sde: mean(-(x' - mean)^2 / (2 s^2) - log s - log sqrt(2 pi))
- cps / ode: -mean((x' - mean)^2) (unnormalised; there is no density for the ODE).
Everything is computed in float32 whatever the model dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch

from common.config import Dynamics

__all__ = ["DYNAMICS", "Dynamics", "SDEStep", "sde_step", "step_std", "kl_std_dev_t", "gaussian_log_prob"]

DYNAMICS: tuple[Dynamics, ...] = get_args(Dynamics)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SDEStep:
    """Result of one step. prev_sample/mean: [B, ...] float32; log_prob: [B]; std: 0-d tensor (s)."""
    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _as_t(s, like: torch.Tensor) -> torch.Tensor:
    """A python/0-d/[B] sigma -> float32 tensor broadcastable against ``like`` [B, ...]."""
    t = torch.as_tensor(s, dtype=torch.float32, device=like.device)
    if t.ndim == 1:
        t = t.view(-1, *([1] * (like.ndim - 1)))
    return t


def kl_std_dev_t(dynamics: Dynamics, sigma, sigma_next, noise_level: float, sigma_max=None) -> torch.Tensor:
    """The step's ``std_dev_t`` (the table's column), which the released v/mean KL divide by.

    KL_v = mean((v_theta - v_ref)^2) / (2 std_dev_t^2 + 1e-7) (docs/algorithm.md §4). It is not the
    step std for flow-sde (that is std_dev_t * sqrt(-dt), :func:`step_std`), and it is for the
    others: dance-sde's eta * sqrt(-dt) already holds the sqrt(-dt), so dividing it out again
    would make the KL |dt| times too small. 0 for ode. sigma: float or tensor -> float32 tensor.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32)
    if dynamics == "flow-sde":
        if sigma_max is None:
            sigma_max = sigma_next  # only matters when sigma == 1; callers pass sigmas[1]
        st = torch.where(sigma == 1, torch.as_tensor(sigma_max, dtype=torch.float32), sigma)
        return noise_level * torch.sqrt(sigma / (1 - st))
    if dynamics == "dance-sde":
        return noise_level * torch.sqrt(sigma - sigma_next)
    if dynamics == "cps":
        return sigma_next * math.sin(noise_level * math.pi / 2)
    if dynamics == "ode":
        return torch.zeros_like(sigma)
    raise ValueError(f"unknown dynamics {dynamics!r}; expected one of {', '.join(DYNAMICS)}")


def step_std(dynamics: Dynamics, sigma, sigma_next, noise_level: float, sigma_max=None) -> torch.Tensor:
    """Std ``s`` of the step's Gaussian (what multiplies eps). 0 for ode. sigma: float or tensor."""
    std_dev_t = kl_std_dev_t(dynamics, sigma, sigma_next, noise_level, sigma_max)
    if dynamics == "flow-sde":  # the only dynamics whose sample scales std_dev_t by sqrt(-dt)
        dt = torch.as_tensor(sigma_next, dtype=torch.float32) - torch.as_tensor(sigma, dtype=torch.float32)
        return std_dev_t * torch.sqrt(-dt)
    return std_dev_t


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-element mean Gaussian log-density: [B, ...] -> [B]. std: scalar or broadcastable."""
    std = std.to(torch.float32)
    lp = -((x - mean) ** 2) / (2 * std ** 2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, x.ndim)))


def sde_step(dynamics: Dynamics, x: torch.Tensor, v: torch.Tensor, sigma, sigma_next,
             noise_level: float = 1.0, sigma_max=None, noise: torch.Tensor | None = None,
             prev_sample: torch.Tensor | None = None) -> SDEStep:
    """One step x_t -> x_{t+1} and log p(x_{t+1} | x_t).

    x, v: [B, ...]; sigma, sigma_next: float, 0-d or [B]; sigma_max: sigmas[1] of the schedule
    (flow-sde only). Rollout: give ``noise`` (eps ~ N(0, I), like x) and get a fresh sample.
    Training: give ``prev_sample`` (the stored x_{t+1}) and get its log-prob under this v; the
    log-prob is differentiable w.r.t. v. With neither, the mean is returned as the sample.
    """
    if dynamics not in DYNAMICS:
        raise ValueError(f"unknown dynamics {dynamics!r}; expected one of {', '.join(DYNAMICS)}")
    x = x.to(torch.float32)
    v = v.to(torch.float32)
    s, s1 = _as_t(sigma, x), _as_t(sigma_next, x)
    dt = s1 - s
    if dynamics == "flow-sde":
        smax = _as_t(sigma_max if sigma_max is not None else sigma_next, x)
        st = torch.where(s == 1, smax, s)
        std_dev_t = noise_level * torch.sqrt(s / (1 - st))
        mean = x * (1 + std_dev_t ** 2 * dt / (2 * s)) + v * (1 + std_dev_t ** 2 * (1 - s) / (2 * s)) * dt
        std = std_dev_t * torch.sqrt(-dt)
    elif dynamics == "dance-sde":
        x0 = x - s * v
        mean = x + (v + 0.5 * noise_level ** 2 * (x - x0 * (1 - s)) / s ** 2) * dt
        std = noise_level * torch.sqrt(-dt)
    elif dynamics == "cps":
        std = s1 * math.sin(noise_level * math.pi / 2)
        x0 = x - s * v
        x1 = x + (1 - s) * v
        mean = (1 - s1) * x0 + torch.sqrt(torch.clamp(s1 ** 2 - std ** 2, min=0)) * x1
    else:  # ode
        mean = x + v * dt
        std = torch.zeros_like(dt)

    if prev_sample is None:
        if noise is not None and dynamics != "ode":
            prev_sample = mean + std * noise.to(torch.float32)
        else:
            prev_sample = mean
    prev_sample = prev_sample.to(torch.float32).detach()

    if dynamics in ("flow-sde", "dance-sde"):
        if bool((std <= 0).any()):
            raise ValueError(f"{dynamics}: the step std is 0 (noise_level={noise_level}); no log-prob exists")
        log_prob = gaussian_log_prob(prev_sample, mean, std)
    else:
        log_prob = -((prev_sample - mean) ** 2).mean(dim=tuple(range(1, x.ndim)))
    std_out = std.reshape(-1)[0] if std.numel() == 1 else std.reshape(-1)  # 0-d, or [B] for per-sample sigmas
    return SDEStep(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std_out)
