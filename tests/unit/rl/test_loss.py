"""PPO loss: released values (clip 1e-4, adv clip 5, KL beta 0.04) by hand, gradient sign property."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.rl import batch_diagnostics, ppo_loss

EPS, ADV_CLIP, BETA = 1e-4, 5.0, 0.04


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def _case():
    # log-ratio 0, +2e-4, +2e-4, -2e-4 against clip 1e-4
    new = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    old = t([0.0, -2e-4, -2e-4, 2e-4])
    return new, old, t([1.0, -1.0, 1.0, 2.0])


def test_hand_computed_released_settings():
    new, old, adv = _case()
    w = t([1.0, 2.0, 0.5, 1.0])
    kl = t([0.1, 0.2, 0.3, 0.4])
    loss, s = ppo_loss(new, old, adv, w, clip_range=EPS, adv_clip=ADV_CLIP, kl=kl, kl_beta=BETA)
    e2 = math.exp(2e-4)
    # per sample: max(-A rho, -A clip(rho)) * w
    #  0: A=1,  rho=1        -> -1
    #  1: A=-1, rho=e^2e-4   -> max(+1.00020002, +1.0001) * 2 = 2.00040004   (unclipped wins)
    #  2: A=1,  rho=e^2e-4   -> max(-1.00020002, -1.0001) * .5 = -0.50005    (clipped: no gradient)
    #  3: A=2,  rho=e^-2e-4  -> max(-1.99960004, -1.9998) = -1.99960004      (unclipped wins)
    per = [-1.0, e2 * 2, -1.0001 * 0.5, -2 / e2]
    assert s.policy_loss == pytest.approx(sum(per) / 4, abs=1e-15)
    assert s.policy_loss == pytest.approx(-0.3748125, abs=1e-9)
    assert s.kl == pytest.approx(0.25) and s.kl_penalty == pytest.approx(0.01)
    assert loss.item() == pytest.approx(-0.3648125, abs=1e-9)
    assert (s.clip_frac_high, s.clip_frac_low, s.clip_frac_active) == (0.5, 0.25, 0.25)
    assert s.ratio_max == pytest.approx(e2) and s.ratio_min == pytest.approx(1 / e2)
    assert s.approx_kl == pytest.approx(((e2 - 1 - 2e-4) * 2 + (1 / e2 - 1 + 2e-4)) / 4, rel=1e-6)
    assert (s.weight_mean, s.weight_min, s.weight_max) == (1.125, 0.5, 2.0)
    loss.backward()
    # d loss / d logp_new_i = -A_i rho_i w_i / B on unclipped samples, 0 on clipped ones
    assert new.grad.tolist() == pytest.approx([-0.25, e2 * 2 / 4, 0.0, -2 / e2 / 4], abs=1e-15)


def test_advantage_clip_and_no_weights_no_kl():
    new = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    loss, s = ppo_loss(new, torch.zeros(3, dtype=torch.float64), t([7.0, -9.0, 1.0]), None, EPS, ADV_CLIP)
    assert loss.item() == pytest.approx(-(5 - 5 + 1) / 3)
    assert (s.adv_max, s.adv_min, s.adv_clip_frac) == (5.0, -5.0, pytest.approx(2 / 3))
    assert s.adv_abs_mean == pytest.approx(11 / 3) and s.kl == 0.0 and s.weight_mean == 1.0
    assert s.ratio_mean == 1.0 and s.approx_kl == 0.0


def test_kl_gradient_enters_with_beta():
    new = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    kl = (x - 1.0) ** 2
    loss, s = ppo_loss(new, torch.zeros(2, dtype=torch.float64), t([0.0, 0.0]), None, EPS, ADV_CLIP, kl, BETA)
    loss.backward()
    assert loss.item() == pytest.approx(BETA * 1.0)
    assert x.grad.tolist() == pytest.approx([BETA * -2 / 2] * 2)
    assert set(s.as_dict("losses/")) >= {"losses/policy_loss", "losses/approx_kl", "losses/clip_frac_high"}


def test_bad_input():
    new = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="advantages"):
        ppo_loss(new, torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="logp_old"):
        ppo_loss(new, torch.tensor([0.0, float("nan")]), torch.zeros(2))
    with pytest.raises(ValueError, match="group_weights"):
        ppo_loss(new, torch.zeros(2), torch.zeros(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="clip_range"):
        ppo_loss(new, torch.zeros(2), torch.zeros(2), clip_range=0.0)
    with pytest.raises(ValueError, match="torch tensor"):
        ppo_loss([0.0, 0.0], torch.zeros(2), torch.zeros(2))


def test_batch_diagnostics():
    d = batch_diagnostics(t([[1, 1, 1], [1, 2, 3]]), t([1.0, 1.0]))
    assert d["zero_std_frac"] == 0.5 and d["dar_all_equal"] == 1.0 and d["dar_weight_std"] == 0.0
    d = batch_diagnostics(t([[1, 2], [1, 2]]), t([0.5, 1.5]))
    assert d["dar_all_equal"] == 0.0 and d["dar_weight_min"] == 0.5 and d["dar_weight_max"] == 1.5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-10, 10).filter(lambda a: abs(a) > 1e-3),
                          st.floats(-0.99, 0.99),       # log-ratio as a fraction of the clip range
                          st.floats(0.1, 5.0)), min_size=1, max_size=8),
       st.sampled_from([1e-4, 0.2]))
def test_prop_gradient_sign_follows_advantage_when_unclipped(rows, eps):
    adv = t([r[0] for r in rows])
    log_ratio = t([r[1] for r in rows]) * math.log1p(eps)   # |rho - 1| < eps: inside the trust region
    w = t([r[2] for r in rows])
    new = torch.zeros(len(rows), dtype=torch.float64, requires_grad=True)
    loss, s = ppo_loss(new, -log_ratio, adv, w, clip_range=eps, adv_clip=ADV_CLIP)
    loss.backward()
    assert s.clip_frac_active == 0.0
    assert torch.equal(torch.sign(new.grad), -torch.sign(adv))
    expected = -adv.clamp(-ADV_CLIP, ADV_CLIP) * log_ratio.exp() * w / len(rows)
    torch.testing.assert_close(new.grad, expected)
