"""DAR: released (reference) mode by hand, the normalized mode's closed form, properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.config import DARConfig
from common.rl import apply_dar, dar_weights, group_difficulty, scale_clip_to_unit_mean


def t(x):
    return torch.tensor(x, dtype=torch.float64)


P = t([0.5, 0.6, 0.7, 0.8])  # the usual flat-SigLIP similarity range


def test_reference_mode_is_a_noop_in_the_usual_range_and_default_is_not():
    ref = dar_weights(P, None, gamma=2.0, w_min=0.5, w_max=5.0, mode="reference")
    # (1-p)^2 = .25 .16 .09 .04, all below the 0.5 floor -> all 0.5 -> / mean 0.5 -> all 1
    assert ref.tolist() == [1.0, 1.0, 1.0, 1.0]
    new = dar_weights(P, None, gamma=2.0, w_min=0.5, w_max=5.0, mode="normalized")
    # b ≈ .25 .16 .09 .04 (+1e-6 inside the power); .04 hits the floor 0.5, the rest share
    # 4 - 0.5 = 3.5 over sum .5 -> c = 7: 1.75, 1.12, 0.63, 0.5 (mean exactly 1)
    assert new.tolist() == pytest.approx([1.75, 1.12, 0.63, 0.5], abs=1e-4)
    assert new.mean().item() == pytest.approx(1.0, abs=1e-12)
    assert len(set(new.tolist())) == 4


def test_reference_mode_all_equal_for_any_sims_in_half_to_point_eight():
    g = torch.Generator().manual_seed(0)
    p = 0.5 + 0.3 * torch.rand(24, generator=g, dtype=torch.float64)
    assert torch.equal(dar_weights(p, mode="reference"), torch.ones(24, dtype=torch.float64))
    assert dar_weights(p).std() > 0.1


def test_reference_mode_hand_computed_when_floor_does_not_bind():
    # p = [0, 0.9]: (1+1e-6)^2, (0.1+1e-6)^2 -> clip -> [1.000002, 0.5]; mean .750001 -> [1.33333.., .66666..]
    w = dar_weights(t([0.0, 0.9]), mode="reference")
    a = (1 + 1e-6) ** 2
    m = (a + 0.5) / 2
    assert w.tolist() == pytest.approx([a / m, 0.5 / m], abs=1e-12)
    # clipping of p to [0, 1]: -0.3 acts as 0 and 1.4 as 1
    assert torch.equal(dar_weights(t([-0.3, 1.4]), mode="reference"), dar_weights(t([0.0, 1.0]), mode="reference"))


def test_reference_mode_int_casts_gamma():
    p = t([0.1, 0.4])
    assert torch.equal(dar_weights(p, gamma=1.5, mode="reference"), dar_weights(p, gamma=1.0, mode="reference"))
    assert dar_weights(p, gamma=0.5, mode="reference").tolist() == [1.0, 1.0]  # gamma 0.5 -> 0
    assert not torch.allclose(dar_weights(p, gamma=1.5), dar_weights(p, gamma=1.0))  # float in default mode


def test_normalized_hand_computed_upper_clip_and_count_factor():
    # gamma 1: b = 1-p = [1, .1, .1, .1] (+1e-6). Plain mean-1 scaling gives 3.077 for the first: w_max 2
    # binds, the other three share 2 -> 2/3 each.
    w = dar_weights(t([0.0, 0.9, 0.9, 0.9]), gamma=1.0, w_min=0.1, w_max=2.0)
    assert w.tolist() == pytest.approx([2.0, 2 / 3, 2 / 3, 2 / 3], abs=1e-9)
    # count factor (n/n0)^beta with beta 1, n0 3, equal difficulty: weights ∝ n, mean 1 -> n / mean(n)
    w = dar_weights(t([0.5, 0.5]), t([2, 4]), gamma=2.0, beta=1.0, n0=3.0)
    assert w.tolist() == pytest.approx([2 / 3, 4 / 3], abs=1e-12)
    # n_refs ignored when beta = 0, and in reference mode
    assert torch.equal(dar_weights(t([0.5, 0.5]), t([2, 4]), beta=0.0), t([1.0, 1.0]))
    assert torch.equal(dar_weights(t([0.5, 0.5]), t([2, 4]), beta=1.0, mode="reference"), t([1.0, 1.0]))


def test_scale_clip_closed_form_is_one_scale_then_clip():
    b = t([3.0, 0.2, 0.1, 1.0, 0.05, 0.7])
    w = scale_clip_to_unit_mean(b, 0.5, 2.0)
    # by hand: 3.0 -> 2 (ceiling); .1 and .05 -> .5 (floor); free {.2, 1, .7} share 6 - 2 - 1 = 3
    # over sum 1.9: c = 3 / 1.9; check .2c = .316 < .5 -> .2 joins the floor: c = 2.5 / 1.7
    c = 2.5 / 1.7
    assert w.tolist() == pytest.approx([2.0, 0.5, 0.5, c, 0.5, 0.7 * c], abs=1e-12)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-15)
    # a naive clip/renormalise loop lands elsewhere (it lifts the floored groups off the floor)
    v = b / b.mean()
    for _ in range(200):
        v = torch.clamp(v, 0.5, 2.0)
        v = v / v.mean()
    assert not torch.allclose(v, w, atol=1e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="w_min <= 1 <= w_max"):
        dar_weights(P, w_min=1.2, w_max=5.0)
    with pytest.raises(ValueError, match="p_bar"):
        dar_weights(t([[0.5]]))
    with pytest.raises(ValueError, match="non-finite"):
        dar_weights(t([0.5, float("nan")]))
    with pytest.raises(ValueError, match="mode"):
        dar_weights(P, mode="focal")
    with pytest.raises(ValueError, match="n_refs"):
        dar_weights(P, t([1, 2]), beta=1.0)


def test_group_difficulty_and_config_wrapper():
    raw = t([[0.5, 0.7, float("nan")], [0.8, 0.8, 0.8]])
    assert group_difficulty(raw).tolist() == pytest.approx([0.6, 0.8])
    assert torch.equal(apply_dar(DARConfig(enabled=False), P), torch.ones(4, dtype=torch.float64))
    assert torch.equal(apply_dar(DARConfig(mode="reference"), P), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(apply_dar(DARConfig(), P), dar_weights(P))
    assert dar_weights(torch.tensor([0.5, 0.7])).dtype == torch.float32


@settings(max_examples=80, deadline=None)
@given(arrays(np.float64, st.integers(1, 32), elements=st.floats(-0.5, 1.5)),
       st.floats(0.0, 6.0), st.floats(0.05, 1.0), st.floats(1.0, 10.0),
       st.sampled_from(["normalized", "reference"]))
def test_prop_positive_mean_one_within_bounds(p, gamma, w_min, w_max, mode):
    w = dar_weights(torch.from_numpy(p), None, gamma=gamma, w_min=w_min, w_max=w_max, mode=mode)
    assert (w > 0).all()
    assert (w >= w_min - 1e-12).all() and (w <= w_max + 1e-12).all()
    if mode == "normalized":  # the reference mode's second clip can break the mean (its bug)
        assert w.mean().item() == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(2, 16), elements=st.floats(0.0, 1.0)),
       st.floats(0.1, 4.0), st.floats(0.0, 2.0), st.data())
def test_prop_harder_groups_weigh_more(p, gamma, beta, data):
    n = data.draw(arrays(np.float64, p.shape, elements=st.integers(1, 6).map(float)))
    w = dar_weights(torch.from_numpy(p), torch.from_numpy(np.full_like(p, 3.0)), gamma=gamma, beta=beta).numpy()
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(w[order]) <= 1e-12)  # lower similarity (harder) -> weight not smaller
    w = dar_weights(torch.from_numpy(p), torch.from_numpy(n), gamma=gamma, beta=beta)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-9) and math.isfinite(w.sum().item())
