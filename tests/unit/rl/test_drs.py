"""DRS: released values by hand, masking, ablation switch, monotonicity properties."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import DRSConfig
from common.rl import apply_drs, drs_reward, drs_slope


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_released_slopes():
    # k = 10 + 3 (n - 2): 10, 13, 16, 19, 22 for n = 2..6
    assert drs_slope(t([2, 3, 4, 5, 6]), 10, 3, "increase").tolist() == [10, 13, 16, 19, 22]
    # decrease: 10 + 3 (6 - n)
    assert drs_slope(t([2, 6]), 10, 3, "decrease", n_max=6).tolist() == [22, 10]
    assert drs_slope(t([2, 6]), 10, 3, "constant").tolist() == [10, 10]


def test_slope_must_be_positive():
    with pytest.raises(ValueError, match="k\\(n\\) must be > 0"):
        drs_slope(t([10]), 10, 3, "decrease", n_max=6)  # 10 + 3 (6 - 10) = -2
    with pytest.raises(ValueError, match="k_mode"):
        drs_slope(t([2]), 10, 3, "steeper")


def test_released_reward_hand_computed():
    # tau 0.65; s = 0.7 -> k(n) * 0.05
    r, raw = drs_reward(t([[0.7], [0.7], [0.7]]), t([2, 3, 4]))
    assert r.tolist() == pytest.approx([sig(0.5), sig(0.65), sig(0.8)], abs=1e-12)
    assert r.tolist() == pytest.approx([0.6224593, 0.6570104, 0.6899745], abs=1e-7)
    assert raw.tolist() == pytest.approx([0.7, 0.7, 0.7])


def test_reduce_mean_max_min_hand_computed():
    sims = t([[0.7, 0.6]])  # n=2: sigmoid(+0.5), sigmoid(-0.5)
    r, raw = drs_reward(sims, t([2]), reduce="mean")
    assert r.item() == pytest.approx(0.5, abs=1e-12) and raw.item() == pytest.approx(0.65)
    r, raw = drs_reward(sims, t([2]), reduce="max")
    assert r.item() == pytest.approx(sig(0.5)) and raw.item() == pytest.approx(0.7)
    r, raw = drs_reward(sims, t([2]), reduce="min")
    assert r.item() == pytest.approx(sig(-0.5)) and raw.item() == pytest.approx(0.6)


def test_mask_padding_and_empty_target_is_missing():
    sims = t([[0.7, float("nan")], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [False, False]])
    r, raw = drs_reward(sims, t([2, 2]), mask=mask)
    assert r[0].item() == pytest.approx(sig(0.5)) and raw[0].item() == pytest.approx(0.7)
    assert math.isnan(r[1].item()) and math.isnan(raw[1].item())
    with pytest.raises(ValueError, match="non-finite"):
        drs_reward(t([[float("nan")]]), t([2]))
    with pytest.raises(ValueError, match="n_refs"):
        drs_reward(t([[0.7], [0.7]]), t([2]))


def test_disabled_gives_raw_similarity_and_wrapper_honours_enabled():
    sims = t([[0.7, 0.6], [0.9, 0.8]])
    r, raw = drs_reward(sims, None, enabled=False)
    assert torch.equal(r, raw) and raw.tolist() == pytest.approx([0.65, 0.85])
    on = apply_drs(DRSConfig(), sims, t([2, 3]))
    off = apply_drs(DRSConfig(enabled=False), sims, t([2, 3]))
    assert on[0][1].item() == pytest.approx((sig(13 * 0.25) + sig(13 * 0.15)) / 2)
    assert torch.equal(off[0], off[1]) and torch.equal(on[1], off[1])


def test_float32_in_float32_out():
    r, raw = drs_reward(torch.tensor([[0.7]]), torch.tensor([3]))
    assert r.dtype == torch.float32 and raw.dtype == torch.float32


sim = st.floats(-1, 1, allow_nan=False)


@settings(max_examples=80, deadline=None)
@given(sim, sim, st.integers(1, 8), st.sampled_from(["mean", "max", "min"]))
def test_prop_monotone_in_similarity(a, b, n, reduce):
    lo, hi = min(a, b), max(a, b)
    r, _ = drs_reward(t([[lo, 0.3], [hi, 0.3]]), t([n, n]), reduce=reduce)
    assert r[0] <= r[1]


@settings(max_examples=80, deadline=None)
@given(sim, st.integers(1, 7))
def test_prop_steeper_with_more_references(s, n):
    # released increase mode: more references -> pushed further from 1/2 on the same side of tau
    r, _ = drs_reward(t([[s], [s]]), t([n, n + 1]))
    if s > 0.65:
        assert r[1] >= r[0]
    elif s < 0.65:
        assert r[1] <= r[0]
    assert abs(r[1] - 0.5) >= abs(r[0] - 0.5) - 1e-15
    # the slope at tau, k(n)/4, grows with n
    k = drs_slope(t([n, n + 1]), 10, 3)
    assert k[1] > k[0]


def test_calibrated_tau_is_the_quantile_of_the_starting_scores():
    from common.rl import calibrate_tau
    # median of [0.1, 0.2, 0.3, 0.9] (NaN ignored) = (0.2 + 0.3) / 2 = 0.25; 75th percentile by
    # linear interpolation at position 0.75·3 = 2.25: 0.3 + 0.25·(0.9 − 0.3) = 0.45
    scores = torch.tensor([[0.9, float("nan")], [0.1, 0.3], [0.2, float("nan")]])
    assert calibrate_tau(scores, 0.5) == pytest.approx(0.25)
    assert calibrate_tau(scores, 0.75) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="no finite"):
        calibrate_tau(torch.tensor([float("nan")]))


def test_uncalibrated_auto_tau_is_refused():
    from common.config import DRSConfig
    from common.rl import apply_drs
    with pytest.raises(ValueError, match="auto"):
        apply_drs(DRSConfig(tau="auto"), torch.ones(2, 1), torch.ones(2))
