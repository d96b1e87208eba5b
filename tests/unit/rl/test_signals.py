"""The DRS -> GDPO/GRPO -> DAR composition, by hand: missing scores, mixed reference counts,
negative similarities, every mode (gdpo/grpo, drs on/off, dar on/off, reference/normalized)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import RewardComponent, RLConfig
from common.rl import batch_signals, group_difficulty

SIM = RewardComponent(name="sim", scorer="similarity", weight=1.0, against="target", drs=True)
STYLE = RewardComponent(name="style", scorer="style", weight=0.8, against="style")
LN3 = math.log(3.0)  # sigmoid(±ln 3) = 3/4, 1/4


def rl(advantage="gdpo", drs=True, dar=True, mode="normalized", **dar_kw) -> RLConfig:
    return RLConfig(advantage=advantage, drs={"enabled": drs}, dar={"enabled": dar, "mode": mode, **dar_kw})


def col(*v):
    """One target per member: [G][1]."""
    return [[x] for x in v]


# ---- DAR reads clip(raw) member-wise, then the group mean (the released order) -------------------

def test_reference_mode_clips_each_member_before_the_group_mean():
    # A = raw [-0.5, 0.5], B = [0.1, 0.1], gamma 2, reference mode (w_min 0.5, w_max 5).
    # Released order: A -> clip -> [0, 0.5] -> p̄ 0.25; B -> p̄ 0.1.
    #   b_A = (1 - 0.25 + 1e-6)^2 = 0.750001^2 = 0.5625015, b_B = 0.900001^2 = 0.8100018
    #   both above the 0.5 floor; mean 0.6862517 -> w = [0.8197, 1.1803]   (~[0.82, 1.18])
    # Mean-then-clip (the old learner): A -> mean 0 -> p̄ 0 -> b_A = 1.000001^2, b_B = 0.81;
    #   mean 0.905001 -> w = [1.105, 0.895]: the order of the two groups flips.
    groups = [{"sim": col(-0.5, 0.5)}, {"sim": col(0.1, 0.1)}]
    sig = batch_signals(groups, [2, 2], [SIM], rl(mode="reference", gamma=2.0))
    a, b = 0.750001 ** 2, 0.900001 ** 2
    m = (a + b) / 2
    assert sig.p_bar.tolist() == pytest.approx([0.25, 0.1], abs=1e-7)
    assert sig.dar_weights.tolist() == pytest.approx([a / m, b / m], abs=1e-6)
    assert sig.dar_weights.tolist() == pytest.approx([0.82, 1.18], abs=5e-3)


def test_normalized_mode_also_clips_negative_members_to_zero():
    # gamma 1, A = raw [-0.5, 0.5] -> [0, 0.5] -> p̄ 0.25, B = [0.4, 0.4] -> p̄ 0.4
    # b = 1 - p̄ (+1e-6) = [0.75, 0.6]; mean-1 scale c = 2 / 1.35, no bound binds:
    #   w = [0.75 / 0.675, 0.6 / 0.675] = [10/9, 8/9]
    # (mean-then-clip would read A as p̄ 0: b = [1, 0.6] -> [1.25, 0.75])
    cfg = rl(gamma=1.0)
    sig = batch_signals([{"sim": col(-0.5, 0.5)}, {"sim": col(0.4, 0.4)}], [2, 2], [SIM], cfg)
    assert sig.dar_weights.tolist() == pytest.approx([10 / 9, 8 / 9], abs=1e-5)
    # a negative member acts exactly as a member at 0
    same = batch_signals([{"sim": col(0.0, 0.5)}, {"sim": col(0.4, 0.4)}], [2, 2], [SIM], cfg)
    torch.testing.assert_close(sig.dar_weights, same.dar_weights, rtol=0, atol=0)


def test_group_difficulty_clips_members_then_averages_and_skips_missing():
    raw = torch.tensor([[-0.5, 0.5, float("nan")], [1.4, 0.2, 0.2], [float("nan")] * 3], dtype=torch.float64)
    p = group_difficulty(raw)
    # [0, .5] -> .25; [1, .2, .2] -> 1.4/3; no scored member -> NaN
    assert p[:2].tolist() == pytest.approx([0.25, 1.4 / 3], abs=1e-12)
    assert math.isnan(p[2].item())


# ---- GDPO / GRPO with a missing score and a reward that does not apply ---------------------------

def _two_groups():
    # group 0: sim [.2 .4 .6], style [.1 None .3] (member 1 has no style score)
    # group 1: sim [.5 .5 .8], style does not apply (no style reference)
    return [{"sim": col(0.2, 0.4, 0.6), "style": col(0.1, None, 0.3)},
            {"sim": col(0.5, 0.5, 0.8), "style": None}]


def test_gdpo_hand_computed_with_missing_score_and_non_applying_reward():
    sig = batch_signals(_two_groups(), [2, 2], [SIM, STYLE], rl(drs=False, dar=False))
    # per reward, within the group (population std):
    #   g0 sim  [.2 .4 .6]: mean .4, std sqrt(.08/3)  -> z = [-sqrt1.5, 0, sqrt1.5]
    #   g0 style [.1 - .3]: mean .2, std .1 over the 2 scored -> z = [-1, 0 (missing), 1]
    #   g1 sim  [.5 .5 .8]: mean .6, std sqrt(.02)    -> z = [-1/sqrt2, -1/sqrt2, sqrt2]
    # weighted sum (style 0.8, and absent for g1): C0 = ±(sqrt1.5 + .8) and 0, C1 = z of g1
    # batch: mean 0, var = (2 (sqrt1.5 + .8)^2 + 1/2 + 1/2 + 2) / 6
    c0 = math.sqrt(1.5) + 0.8
    std = math.sqrt((2 * c0 ** 2 + 3) / 6)
    want = [[-c0 / std, 0.0, c0 / std], [-1 / math.sqrt(2) / std, -1 / math.sqrt(2) / std, math.sqrt(2) / std]]
    assert sig.advantages.tolist()[0] == pytest.approx(want[0], abs=1e-6)
    assert sig.advantages.tolist()[1] == pytest.approx(want[1], abs=1e-6)
    assert sig.applies.tolist() == [[True, True], [True, False]]
    assert torch.equal(sig.dar_weights, torch.ones(2))  # dar off


def test_grpo_masks_a_member_missing_an_applying_reward():
    sig = batch_signals(_two_groups(), [2, 2], [SIM, STYLE], rl(advantage="grpo", drs=False, dar=False))
    # g0 totals .2 + .8*.1 = .28, NaN (no style), .6 + .8*.3 = .84 -> mean .56, std .28 -> [-1, 0, 1]
    # g1 only sim applies: [.5 .5 .8] -> [-1/sqrt2, -1/sqrt2, sqrt2]
    assert sig.advantages.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    r = 1 / math.sqrt(2)
    assert sig.advantages.tolist()[1] == pytest.approx([-r, -r, math.sqrt(2)], abs=1e-6)


# ---- DRS: the slope follows each group's reference count ----------------------------------------

def test_drs_slope_per_group_reference_count_and_off():
    # increase mode, k0 10, k1 3, tau .65: n = 2 -> k 10, n = 4 -> k 16.
    # s = tau ± ln3/k gives sigmoid(±ln3) = 3/4, 1/4, so both groups get rewards [.25 .5 .75]
    # from different raw similarities; a second target tau ∓ ln3/10 averages to .5 (reduce mean)
    tau = 0.65
    groups = [{"sim": col(tau - LN3 / 10, tau, tau + LN3 / 10)},
              {"sim": col(tau - LN3 / 16, tau, tau + LN3 / 16)},
              {"sim": [[tau + LN3 / 10, tau - LN3 / 10], [tau, None], [None, None]]}]
    sig = batch_signals(groups, [2, 4, 2], [SIM], rl(advantage="grpo", dar=False))
    assert sig.rewards[0, 0].tolist() == pytest.approx([0.25, 0.5, 0.75], abs=1e-6)
    assert sig.rewards[0, 1].tolist() == pytest.approx([0.25, 0.5, 0.75], abs=1e-6)
    # group 2: member 0 = mean(3/4, 1/4) = .5 with raw tau; member 1 one target; member 2 no score
    assert sig.rewards[0, 2, :2].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert sig.raw[0, 2, :2].tolist() == pytest.approx([tau, tau], abs=1e-9)
    assert math.isnan(sig.rewards[0, 2, 2].item()) and math.isnan(sig.raw[0, 2, 2].item())
    # equal rewards -> equal GRPO advantages in groups 0 and 1 ([-sqrt1.5, 0, sqrt1.5])
    assert sig.advantages[0].tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], abs=1e-5)
    torch.testing.assert_close(sig.advantages[0], sig.advantages[1])
    # DRS off: the reward is the raw similarity
    off = batch_signals(groups, [2, 4, 2], [SIM], rl(advantage="grpo", drs=False, dar=False))
    torch.testing.assert_close(off.rewards, off.raw, equal_nan=True)
    assert off.rewards[0, 1].tolist() == pytest.approx([tau - LN3 / 16, tau, tau + LN3 / 16], abs=1e-12)


def test_drs_slope_not_positive_is_a_value_error():
    # decrease mode: k = 10 + 3 (6 - n) <= 0 for n >= 10 (the learner dead-letters such a group)
    cfg = RLConfig(drs={"k_mode": "decrease"}, dar={"enabled": False})
    with pytest.raises(ValueError, match="drs slope"):
        batch_signals([{"sim": col(0.5, 0.6)}], [10], [SIM], cfg)


# ---- which difficulty DAR reads, and groups without it ------------------------------------------

def test_dar_reads_the_first_drs_component_and_fills_groups_without_it():
    # style comes first but DAR reads sim (drs=True); group 1 has no sim: it gets the batch mean
    groups = [{"style": col(0.9, 0.9), "sim": col(0.2, 0.4)},
              {"style": col(0.1, 0.3), "sim": None},
              {"style": col(0.5, 0.5), "sim": col(0.4, 0.6)}]
    sig = batch_signals(groups, [2, 2, 2], [STYLE, SIM], rl(mode="reference", gamma=1.0))
    # p̄ = [.3, (.3 + .5)/2 = .4, .5]; reference gamma 1: b = [.7, .6, .5] (+1e-6), all > .5 floor,
    # mean .6 -> w = [7/6, 1, 5/6]
    assert sig.p_bar.tolist() == pytest.approx([0.3, 0.4, 0.5], abs=1e-6)
    assert sig.dar_weights.tolist() == pytest.approx([7 / 6, 1.0, 5 / 6], abs=1e-5)
    off = batch_signals(groups, [2, 2, 2], [STYLE, SIM], rl(dar=False))
    assert torch.equal(off.dar_weights, torch.ones(3))
    torch.testing.assert_close(off.advantages, sig.advantages)  # DAR never touches the advantages


# ---- properties ---------------------------------------------------------------------------------

sims = st.floats(-1.0, 1.0, allow_nan=False)


@st.composite
def batches(draw):
    b, g = draw(st.integers(1, 6)), draw(st.integers(2, 5))
    raw = draw(st.lists(st.lists(sims, min_size=g, max_size=g), min_size=b, max_size=b))
    n = draw(st.lists(st.integers(1, 10), min_size=b, max_size=b))
    return raw, n


@settings(max_examples=80, deadline=None)
@given(batches(), st.sampled_from(["normalized", "reference"]), st.floats(0.0, 4.0), st.booleans())
def test_prop_dar_is_invariant_to_negative_members_replaced_by_zero(batch, mode, gamma, drs):
    raw, n = batch
    cfg = rl(drs=drs, mode=mode, gamma=gamma if mode == "normalized" else float(int(gamma)))
    w = batch_signals([{"sim": col(*r)} for r in raw], n, [SIM], cfg).dar_weights
    w0 = batch_signals([{"sim": col(*(max(x, 0.0) for x in r))} for r in raw], n, [SIM], cfg).dar_weights
    torch.testing.assert_close(w, w0, rtol=0, atol=0)


@settings(max_examples=80, deadline=None)
@given(batches(), st.sampled_from(["normalized", "reference"]), st.floats(0.0, 6.0),
       st.floats(0.05, 1.0), st.floats(1.0, 10.0), st.floats(0.0, 2.0), st.sampled_from(["gdpo", "grpo"]))
def test_prop_weights_within_bounds_and_advantages_finite(batch, mode, gamma, w_min, w_max, beta, adv):
    raw, n = batch
    # reference mode reads an integer gamma and no count factor (other values are refused at load)
    extra = {"beta": beta, "gamma": gamma} if mode == "normalized" else {"gamma": float(int(gamma))}
    sig = batch_signals([{"sim": col(*r)} for r in raw], n, [SIM],
                        rl(advantage=adv, mode=mode, w_min=w_min, w_max=w_max, **extra))
    w = sig.dar_weights.double()
    assert (w >= w_min * (1 - 1e-6)).all() and (w <= w_max * (1 + 1e-6)).all()
    assert ((sig.p_bar >= 0) & (sig.p_bar <= 1)).all()
    assert torch.isfinite(sig.advantages).all()
