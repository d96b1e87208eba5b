"""GRPO / GDPO advantages: hand-computed values, missing-score policy, properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.rl import gdpo_advantages, grpo_advantages, zero_std_fraction

NAN = float("nan")
S5 = math.sqrt(5.0)  # [1,2,3,4]: mean 2.5, population std sqrt(1.25) = sqrt(5)/2


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------- GRPO, hand-computed
def test_grpo_hand_computed_population_std():
    a = grpo_advantages(t([[1, 2, 3, 4], [5, 5, 5, 5]]))
    # (r - 2.5) / (sqrt(5)/2): -3/sqrt5, -1/sqrt5, 1/sqrt5, 3/sqrt5; a constant group gets 0 (std floored)
    torch.testing.assert_close(a[0], t([-3, -1, 1, 3]) / S5)
    assert torch.equal(a[1], torch.zeros(4, dtype=torch.float64))


def test_grpo_global_std_divides_by_batch_std():
    r = t([[1, 2, 3, 4], [5, 5, 5, 5]])
    a = grpo_advantages(r, global_std=True)
    gstd = r.flatten().std(unbiased=False)  # mean 3.75, sum of squared deviations 17.5 -> sqrt(17.5/8)
    torch.testing.assert_close(a[0], (r[0] - 2.5) / gstd)
    assert torch.equal(a[1], torch.zeros(4, dtype=torch.float64))
    assert gstd.item() == pytest.approx(math.sqrt(2.1875), rel=1e-12)


def test_grpo_eps_floor_hand_computed():
    # std = 5e-8 < eps = 1e-6: (r - mean) / 1e-6
    a = grpo_advantages(t([[0.0, 1e-7]]), eps=1e-6)
    torch.testing.assert_close(a, t([[-0.05, 0.05]]))


def test_grpo_missing_member_is_masked_not_filled():
    a = grpo_advantages(t([[1, NAN, 3]]))
    # stats over [1, 3]: mean 2, std 1 -> [-1, 0 (missing), 1]
    torch.testing.assert_close(a, t([[-1, 0, 1]]))


def test_grpo_bad_input():
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        grpo_advantages(t([1, 2, 3]))
    with pytest.raises(ValueError, match="inf"):
        grpo_advantages(t([[1, math.inf]]))


def test_grpo_accepts_numpy_and_keeps_dtype():
    a = grpo_advantages(np.array([[1, 2, 3, 4]], dtype=np.float32))
    assert a.dtype == torch.float32 and a.shape == (1, 4)


# ---------------------------------------------------------------- GDPO, hand-computed
def _gdpo_example():
    # K=2 rewards (image_similarity w=1.0, csd w=0.8), B=2 groups, G=4; csd does not apply to group 1
    r = t([[[1, 2, 3, 4], [4, 3, 2, 1]],
           [[0, 0, 1, 1], [NAN, NAN, NAN, NAN]]])
    applies = torch.tensor([[True, True], [True, False]])
    return r, applies


def test_gdpo_hand_computed_released_weights():
    r, applies = _gdpo_example()
    a = gdpo_advantages(r, t([1.0, 0.8]), applies)
    z0 = np.array([-3, -1, 1, 3]) / S5                  # sim normalised in group 0
    c0 = z0 + 0.8 * np.array([-1, -1, 1, 1])             # csd normalised: mean .5, std .5
    c1 = -z0                                            # group 1: sim only
    c = np.concatenate([c0, c1])
    expected = (c - c.mean()) / c.std()                  # batch mean 0, population std
    assert c.std() == pytest.approx(math.sqrt((2 * ((3 / S5 + .8) ** 2 + (1 / S5 + .8) ** 2) + 4.0) / 8), rel=1e-12)
    assert c.std() == pytest.approx(1.4267243, abs=1e-6)
    torch.testing.assert_close(a.flatten(), t(expected))
    assert a[0, 0].item() == pytest.approx(-1.501090, abs=1e-5)


def test_gdpo_non_applying_values_are_never_read():
    r, applies = _gdpo_example()
    garbage = r.clone()
    garbage[1, 1] = t([1e9, -7, 3, 0])                  # what a mean-fill or junk would put there
    a_nan = gdpo_advantages(r, [1.0, 0.8], applies)
    a_garbage = gdpo_advantages(garbage, [1.0, 0.8], applies)
    assert torch.equal(a_nan, a_garbage)


def test_gdpo_rank_dependent_mean_fill_would_create_fake_variance():
    # The released fill puts a different constant per rank into a non-style group; GDPO then
    # scales that noise up to unit size. Excluding it explicitly gives the pure similarity signal.
    sim = t([[0.6, 0.6, 0.7, 0.7]])
    fill = t([[0.30, 0.31, 0.30, 0.31]])                # rank-local means on two ranks
    filled = gdpo_advantages(torch.stack([sim, fill]), [1.0, 0.8], None)
    excluded = gdpo_advantages(torch.stack([sim, fill]), [1.0, 0.8], torch.tensor([[True], [False]]))
    torch.testing.assert_close(excluded, t([[-1, -1, 1, 1]]))
    assert not torch.allclose(filled, excluded)          # fill = fake signal [-.8, .8, -.8, .8]


def test_gdpo_missing_member_mask_vs_drop():
    r = t([[[1, 2, 3, 4]], [[0, NAN, 1, 1]]])
    # mask_member: csd stats over [0, 1, 1]: mean 2/3, std sqrt(2)/3 -> [-sqrt2, 0, 1/sqrt2, 1/sqrt2]
    a = gdpo_advantages(r, [1.0, 1.0], None, missing="mask_member")
    c = np.array([-3, -1, 1, 3]) / S5 + np.array([-math.sqrt(2), 0, 1 / math.sqrt(2), 1 / math.sqrt(2)])
    torch.testing.assert_close(a.flatten(), t((c - c.mean()) / c.std()))
    # drop_reward: csd excluded for the group -> pure similarity advantages
    d = gdpo_advantages(r, [1.0, 1.0], None, missing="drop_reward")
    torch.testing.assert_close(d.flatten(), t([-3, -1, 1, 3]) / S5)


def test_gdpo_group_without_any_reward_gets_zero_and_is_out_of_batch_stats():
    r = t([[[1, 2, 3, 4], [9, 9, 1, 1]]])
    a = gdpo_advantages(r, [1.0], torch.tensor([[True, False]]))
    torch.testing.assert_close(a[0], t([-3, -1, 1, 3]) / S5)  # batch std = 1 from group 0 alone
    assert torch.equal(a[1], torch.zeros(4, dtype=torch.float64))


def test_gdpo_member_without_any_score_gets_zero():
    r = t([[[1, NAN, 3, 5]]])
    a = gdpo_advantages(r, [1.0])
    # scored [1, 3, 5]: mean 3, std sqrt(8/3); batch stats over the same three members
    torch.testing.assert_close(a, t([[-math.sqrt(1.5), 0, 0, math.sqrt(1.5)]]))


def test_gdpo_bad_input():
    r, applies = _gdpo_example()
    with pytest.raises(ValueError, match="weights"):
        gdpo_advantages(r, [1.0], applies)
    with pytest.raises(ValueError, match="applies"):
        gdpo_advantages(r, [1.0, 0.8], torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="missing"):
        gdpo_advantages(r, [1.0, 0.8], applies, missing="fill")
    bad = r.clone()
    bad[0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="inf"):
        gdpo_advantages(bad, [1.0, 0.8], applies)


def test_zero_std_fraction():
    assert zero_std_fraction(t([[1, 1, 1], [1, 2, 3], [2, 2, NAN]])) == pytest.approx(2 / 3)
    r, applies = _gdpo_example()
    assert zero_std_fraction(r, applies=applies) == 0.0
    assert zero_std_fraction(t([[1, 2]]), applies=torch.tensor([False])) == 0.0


# ---------------------------------------------------------------- properties
finite = st.floats(-100, 100, allow_nan=False, width=64)
groups = st.tuples(st.integers(1, 5), st.integers(2, 8)).flatmap(
    lambda s: arrays(np.float64, s, elements=finite))


@settings(max_examples=60, deadline=None)
@given(groups)
def test_prop_grpo_zero_mean_per_group(r):
    a = grpo_advantages(torch.from_numpy(r))
    assert torch.allclose(a.mean(dim=1), torch.zeros(r.shape[0], dtype=torch.float64), atol=1e-9)
    const = (r == r[:, :1]).all(axis=1)
    assert (a[torch.from_numpy(const)] == 0).all()  # a constant group gets exactly 0, no rounding noise
    # each group has unit population std unless it is (numerically) constant
    std = torch.from_numpy(r).std(dim=1, unbiased=False)
    big = std > 1e-3
    assert torch.allclose(a.std(dim=1, unbiased=False)[big], torch.ones(int(big.sum()), dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(groups, st.data())
def test_prop_grpo_invariant_to_per_group_constant(r, data):
    shift = np.array(data.draw(st.lists(st.floats(-50, 50), min_size=r.shape[0], max_size=r.shape[0])))
    r = np.round(r, 3)  # keep the group std far from the eps floor relative to rounding of the shift
    a = grpo_advantages(torch.from_numpy(r))
    b = grpo_advantages(torch.from_numpy(r + shift[:, None]))
    assert torch.allclose(a, b, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(2, 6), st.data())
def test_prop_gdpo_invariant_to_per_group_constant_and_zero_mean(k, b, g, data):
    r = data.draw(arrays(np.float64, (k, b, g), elements=st.floats(-10, 10).map(lambda x: round(x, 2))))
    shift = data.draw(arrays(np.float64, (k, b, 1), elements=st.floats(-20, 20)))
    applies = data.draw(arrays(np.bool_, (k, b)))
    w = data.draw(arrays(np.float64, (k,), elements=st.floats(0.1, 2.0)))
    a = gdpo_advantages(torch.from_numpy(r), torch.from_numpy(w), torch.from_numpy(applies))
    a2 = gdpo_advantages(torch.from_numpy(r + shift), torch.from_numpy(w), torch.from_numpy(applies))
    assert torch.allclose(a, a2, atol=1e-6)
    # without missing scores every group's advantages sum to zero (batch mean is 0 too)
    assert torch.allclose(a.sum(dim=1), torch.zeros(b, dtype=torch.float64), atol=1e-8)
    assert torch.isfinite(a).all()
