"""EMA: released warm-up schedule by hand, interval, swap, state dict."""
from __future__ import annotations

import pytest
import torch

from common.config import EMAConfig
from common.rl import EMA, ema_decay


def test_released_warmup_schedule():
    # interval 4: updates at steps 3, 7, 11 with d = 4/13, 8/17, 12/21; capped at 0.9
    assert ema_decay(3, 0.9, True) == pytest.approx(4 / 13)
    assert ema_decay(7, 0.9, True) == pytest.approx(0.470588, abs=1e-6)
    assert ema_decay(1000, 0.9, True) == 0.9
    assert ema_decay(3, 0.9, False) == 0.9


def test_update_interval_and_values_hand_computed():
    p = torch.zeros(2)
    ema = EMA.from_config(EMAConfig(), {"w": p})      # decay .9, interval 4, warm-up on
    applied = []
    for step in range(8):
        p.fill_(float(step + 1))                       # live weight after step `step`
        applied.append(ema.update(step))
    assert [d is not None for d in applied] == [False, False, False, True] * 2
    # step 3: d = 4/13, theta = 4 -> (9/13)*4; step 7: d = 8/17, theta = 8
    e3 = (1 - 4 / 13) * 4
    e7 = 8 / 17 * e3 + (1 - 8 / 17) * 8
    assert ema.shadow["w"].tolist() == pytest.approx([e7, e7], rel=1e-6)
    assert ema.num_updates == 2


def test_plain_decay_on_iterable_params():
    a, b = torch.ones(3), torch.full((2,), 2.0)
    ema = EMA([a, b], decay=0.5)
    a.fill_(3.0)
    b.fill_(0.0)
    assert ema.update(0) == 0.5
    assert ema.shadow["0"].tolist() == [2.0, 2.0, 2.0] and ema.shadow["1"].tolist() == [1.0, 1.0]


def test_swap_and_copy_to_and_state_dict_roundtrip():
    lin = torch.nn.Linear(2, 1)
    params = dict(lin.named_parameters())
    ema = EMA(params, decay=0.5)
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(0)
    live = lin.weight.detach().clone()
    with ema.swapped():
        torch.testing.assert_close(lin.weight.detach(), ema.shadow["weight"])
    torch.testing.assert_close(lin.weight.detach(), live)   # live weights restored
    other = EMA(dict(torch.nn.Linear(2, 1).named_parameters()), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1
    torch.testing.assert_close(other.shadow["weight"], ema.shadow["weight"])
    target = dict(torch.nn.Linear(2, 1).named_parameters())
    ema.copy_to({k: v.data for k, v in target.items()})
    torch.testing.assert_close(target["weight"].detach(), ema.shadow["weight"])


def test_bad_input():
    with pytest.raises(ValueError, match="decay"):
        EMA([torch.zeros(1)], decay=1.0)
    with pytest.raises(ValueError, match="floating"):
        EMA({"n": torch.zeros(1, dtype=torch.long)})
    ema = EMA({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="names differ"):
        ema.load_state_dict({"shadow": {"v": torch.zeros(2)}})
    with pytest.raises(ValueError, match="shape"):
        ema.copy_to({"w": torch.zeros(3)})
