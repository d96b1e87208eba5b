import math

import pytest
import torch

from common.policy.sde import DYNAMICS, gaussian_log_prob, kl_std_dev_t, sde_step, step_std


def _xv(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 5, 4, generator=g), torch.randn(b, 5, 4, generator=g), torch.randn(b, 5, 4, generator=g)


def test_flow_sde_matches_paper_formula():
    x, v, eps = _xv()
    s, s1, eta = 0.8, 0.6, 0.7
    dt = s1 - s
    std_dev = eta * math.sqrt(s / (1 - s))
    mean = x * (1 + std_dev ** 2 * dt / (2 * s)) + v * (1 + std_dev ** 2 * (1 - s) / (2 * s)) * dt
    sd = std_dev * math.sqrt(-dt)
    out = sde_step("flow-sde", x, v, s, s1, eta, sigma_max=0.95, noise=eps)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.prev_sample, mean + sd * eps)
    assert out.std.item() == pytest.approx(sd, rel=1e-6)
    # per-element MEAN of the Gaussian log-density, not a sum
    ref = torch.distributions.Normal(mean, sd).log_prob(out.prev_sample).mean(dim=(1, 2))
    torch.testing.assert_close(out.log_prob, ref)


def test_flow_sde_sigma_one_uses_sigma_max():
    x, v, eps = _xv()
    out = sde_step("flow-sde", x, v, 1.0, 0.9, 1.0, sigma_max=0.9, noise=eps)
    sd = 1.0 * math.sqrt(1.0 / (1 - 0.9)) * math.sqrt(0.1)
    assert torch.isfinite(out.log_prob).all()
    assert out.std.item() == pytest.approx(sd, rel=1e-5)
    assert step_std("flow-sde", 1.0, 0.9, 1.0, sigma_max=0.9).item() == pytest.approx(sd, rel=1e-5)


def test_dance_sde_formula():
    x, v, eps = _xv(seed=1)
    s, s1, eta = 0.7, 0.5, 0.5
    dt = s1 - s
    x0 = x - s * v
    mean = x + (v + 0.5 * eta ** 2 * (x - x0 * (1 - s)) / s ** 2) * dt
    std = eta * math.sqrt(-dt)
    out = sde_step("dance-sde", x, v, s, s1, eta, noise=eps)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.prev_sample, mean + std * eps)
    ref = torch.distributions.Normal(mean, std).log_prob(out.prev_sample).mean(dim=(1, 2))
    torch.testing.assert_close(out.log_prob, ref)


def test_cps_formula_and_unnormalised_log_prob():
    x, v, eps = _xv(seed=2)
    s, s1, eta = 0.7, 0.5, 0.6
    std = s1 * math.sin(eta * math.pi / 2)
    mean = (1 - s1) * (x - s * v) + math.sqrt(s1 ** 2 - std ** 2) * (x + (1 - s) * v)
    out = sde_step("cps", x, v, s, s1, eta, noise=eps)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.prev_sample, mean + std * eps)
    torch.testing.assert_close(out.log_prob, -((out.prev_sample - mean) ** 2).mean(dim=(1, 2)))


def test_ode_is_euler_and_ignores_noise():
    x, v, eps = _xv(seed=3)
    out = sde_step("ode", x, v, 0.5, 0.25, 1.0, noise=eps)
    torch.testing.assert_close(out.prev_sample, x + v * (0.25 - 0.5))
    assert torch.all(out.log_prob == 0)
    assert out.std.item() == 0


def test_recompute_from_stored_sample_is_exact_and_differentiable():
    x, v, eps = _xv(seed=4)
    for dyn in DYNAMICS:
        roll = sde_step(dyn, x, v, 0.8, 0.6, 0.9, sigma_max=0.95, noise=eps)
        vv = v.clone().requires_grad_(True)
        rec = sde_step(dyn, x, vv, 0.8, 0.6, 0.9, sigma_max=0.95, prev_sample=roll.prev_sample)
        torch.testing.assert_close(rec.log_prob, roll.log_prob, rtol=0, atol=0)
        rec.log_prob.sum().backward()
        assert vv.grad is not None and (dyn == "ode" or vv.grad.abs().sum() > 0)


def test_per_sample_sigma_broadcasts():
    x, v, eps = _xv(b=2, seed=5)
    s = torch.tensor([0.8, 0.5])
    s1 = torch.tensor([0.6, 0.3])
    both = sde_step("flow-sde", x, v, s, s1, 1.0, sigma_max=0.95, noise=eps)
    for i in range(2):
        one = sde_step("flow-sde", x[i:i + 1], v[i:i + 1], s[i].item(), s1[i].item(), 1.0, sigma_max=0.95,
                       noise=eps[i:i + 1])
        torch.testing.assert_close(both.log_prob[i:i + 1], one.log_prob)
        torch.testing.assert_close(both.prev_sample[i:i + 1], one.prev_sample)


def test_zero_noise_has_no_gaussian_log_prob_and_unknown_dynamics_raises():
    x, v, eps = _xv()
    with pytest.raises(ValueError, match="std is 0"):
        sde_step("flow-sde", x, v, 0.8, 0.6, 0.0, noise=eps)
    with pytest.raises(ValueError, match="unknown dynamics"):
        sde_step("euler-maruyama", x, v, 0.8, 0.6, 1.0)
    with pytest.raises(ValueError, match="unknown dynamics"):
        step_std("nope", 0.8, 0.6, 1.0)


def test_gaussian_log_prob_mean_over_elements():
    x = torch.zeros(2, 3, 4)
    lp = gaussian_log_prob(x, torch.zeros_like(x), torch.tensor(1.0))
    torch.testing.assert_close(lp, torch.full((2,), -0.5 * math.log(2 * math.pi)))


@pytest.mark.parametrize("dyn, sigma, sigma_next, eta, sigma_max, std_dev_t, s", [
    # flow-sde: eta sqrt(sigma / (1 - sigma)) = sqrt(.8 / .2) = 2; sample std 2 sqrt(.2) = .894427
    ("flow-sde", 0.8, 0.6, 1.0, None, 2.0, 2.0 * math.sqrt(0.2)),
    # flow-sde at sigma 1 reads sigma_max .9: .5 sqrt(1 / .1) = 1.581139; sample std x sqrt(.1) = .5
    ("flow-sde", 1.0, 0.9, 0.5, 0.9, 0.5 * math.sqrt(10.0), 0.5),
    # dance-sde: eta sqrt(-dt) = .5 sqrt(.25) = .25, which IS the sample std (no second sqrt(-dt))
    ("dance-sde", 0.7, 0.45, 0.5, None, 0.25, 0.25),
    # cps: sigma_next sin(eta pi / 2) = .6 sin(pi / 6) = .3, also the sample std
    ("cps", 0.7, 0.6, 1 / 3, None, 0.3, 0.3),
    # ode: no noise
    ("ode", 0.7, 0.6, 1.0, None, 0.0, 0.0),
])
def test_kl_std_dev_t_and_step_std_per_dynamics(dyn, sigma, sigma_next, eta, sigma_max, std_dev_t, s):
    assert kl_std_dev_t(dyn, sigma, sigma_next, eta, sigma_max=sigma_max).item() == pytest.approx(std_dev_t, rel=1e-6, abs=1e-7)
    assert step_std(dyn, sigma, sigma_next, eta, sigma_max=sigma_max).item() == pytest.approx(s, rel=1e-6, abs=1e-7)
    # the std the sampler draws with is step_std, for every dynamics
    x, v, eps = _xv(seed=6)
    out = sde_step(dyn, x, v, sigma, sigma_next, eta, sigma_max=sigma_max, noise=eps)
    assert out.std.item() == pytest.approx(s, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(out.prev_sample, out.mean + s * eps)


def test_kl_std_dev_t_tensor_sigmas_and_unknown_dynamics():
    got = kl_std_dev_t("dance-sde", torch.tensor([0.8, 0.5]), torch.tensor([0.6, 0.3]), 1.0)
    torch.testing.assert_close(got, torch.tensor([math.sqrt(0.2), math.sqrt(0.2)]))
    with pytest.raises(ValueError, match="unknown dynamics"):
        kl_std_dev_t("nope", 0.8, 0.6, 1.0)
