"""KL kinds: released formulas by hand, the exact Gaussian KL against torch.distributions."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from common.rl import kl_penalty


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_v_kind_hand_computed():
    v = torch.zeros(2, 4, dtype=torch.float64)
    v_ref = v.clone()
    v_ref[0] += 0.1                     # mean sq diff 0.01 for sample 0, 0 for sample 1
    kl = kl_penalty("v", v, v_ref, std_dev_t=1.0)
    assert kl.tolist() == pytest.approx([0.01 / (2 + 1e-7), 0.0], abs=1e-15)
    # per-sample sigma: sigma 0.5 -> 0.01 / (0.5 + 1e-7)
    kl = kl_penalty("v", v, v_ref, std_dev_t=t([0.5, 2.0]))
    assert kl[0].item() == pytest.approx(0.01 / (0.5 + 1e-7), rel=1e-12)


def test_mean_kind_and_released_beta():
    mu = torch.zeros(1, 2, 3, dtype=torch.float64)
    mu_ref = torch.full_like(mu, 0.2)   # mean sq 0.04
    kl = kl_penalty("mean", mean_theta=mu, mean_ref=mu_ref, std_dev_t=t([0.8]))
    assert kl.item() == pytest.approx(0.04 / (2 * 0.64 + 1e-7), rel=1e-12)
    assert (0.04 * kl).item() == pytest.approx(0.04 * 0.03124999756, rel=1e-8)  # released beta 0.04


def test_gaussian_kind_is_exact_per_element_mean():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    mu_ref = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    sigma, dt = t([1.0, 0.7, 1.3]), -0.1
    kl = kl_penalty("gaussian", mean_theta=mu, mean_ref=mu_ref, std_dev_t=sigma, dt=dt)
    s = (sigma * math.sqrt(0.1)).reshape(3, 1, 1).expand_as(mu)
    exact = kl_divergence(Normal(mu, s), Normal(mu_ref, s)).reshape(3, -1).mean(1)
    torch.testing.assert_close(kl, exact)
    # hand: delta 0.1 everywhere, sigma 1, |dt| 0.1 -> 0.01 / (2 * 0.1) = 0.05
    hand = kl_penalty("gaussian", mean_theta=torch.zeros(1, 4), mean_ref=torch.full((1, 4), 0.1), std_dev_t=1.0, dt=0.1)
    assert hand.item() == pytest.approx(0.05, rel=1e-6)
    # the released x-based form is off by exactly |dt| (up to its 1e-7)
    x_based = kl_penalty("mean", mean_theta=mu, mean_ref=mu_ref, std_dev_t=sigma)
    torch.testing.assert_close(x_based, kl * 0.1, rtol=1e-6, atol=0)


def test_gradient_flows_through_theta():
    v = torch.zeros(2, 3, requires_grad=True)
    kl_penalty("v", v, torch.ones(2, 3), std_dev_t=1.0).sum().backward()
    assert v.grad is not None and (v.grad < 0).all()


def test_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="kind"):
        kl_penalty("k3", x, x, std_dev_t=1.0)
    with pytest.raises(ValueError, match="required"):
        kl_penalty("v", mean_theta=x, mean_ref=x, std_dev_t=1.0)
    with pytest.raises(ValueError, match="same"):
        kl_penalty("v", x, torch.zeros(2, 4), std_dev_t=1.0)
    with pytest.raises(ValueError, match="dt is required"):
        kl_penalty("gaussian", mean_theta=x, mean_ref=x, std_dev_t=1.0)
    with pytest.raises(ValueError, match="noisy step"):
        kl_penalty("gaussian", mean_theta=x, mean_ref=x, std_dev_t=0.0, dt=-0.1)
    with pytest.raises(ValueError, match="std_dev_t"):
        kl_penalty("v", x, x, std_dev_t=torch.ones(3))


def test_gaussian_kind_uses_the_given_step_std():
    # dance-sde: the step std IS std_dev_t (eta sqrt(-dt) = .25); delta .1 -> .01 / (2 * .0625) = .08,
    # whatever dt says (std_dev_t * sqrt|dt| would be the flow-sde relation, .125 here)
    mu, mu_ref = torch.zeros(1, 4), torch.full((1, 4), 0.1)
    kl = kl_penalty("gaussian", mean_theta=mu, mean_ref=mu_ref, std_dev_t=0.25, dt=-0.25, step_std=0.25)
    assert kl.item() == pytest.approx(0.08, rel=1e-6)
    with pytest.raises(ValueError, match="noisy step"):
        kl_penalty("gaussian", mean_theta=mu, mean_ref=mu_ref, std_dev_t=0.25, step_std=0.0)
