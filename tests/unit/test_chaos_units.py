"""Pure pieces behind the chaos suite: garbage scores -> missing, fault injection, the ledger guard."""
from __future__ import annotations

import math

import pytest

from services.learner.audit import RedisStateLost, check_ledger
from common.rewards.client import clean_table
from dyref.chaos.faults import ScorerFault, with_fault


def test_clean_table_maps_garbage_to_missing_and_keeps_good_scores():
    table, bad = clean_table([[0.5, 0.25], [float("nan"), 1], [None, float("inf")], ["x", True]], 4)
    assert table == [[0.5, 0.25], [None, 1.0], [None, None], [None, None]] and bad == 4


@pytest.mark.parametrize("scores", [[[0.1]], [[0.1], [0.2], [0.3]], [[0.1], [0.2, 0.3]], [[], []], None, "junk"])
def test_clean_table_refuses_tables_that_cannot_be_attributed(scores):
    table, bad = clean_table(scores, 2)
    assert table == [[None], [None]] and bad == 2


def test_garbage_fault_cycles_through_bad_shapes_and_values_and_clean_table_absorbs_them():
    good = lambda reqs: [[[0.5], [0.6]] for _ in reqs]  # noqa: E731 - a [G=2][J=1] scorer
    faulty = with_fault(good, "garbage", every=1, delay_s=0)
    for _ in range(5):
        [t] = faulty([object()])
        table, _bad = clean_table(t, 2)
        assert len(table) == 2 and all(v is None or math.isfinite(v) for row in table for v in row)
    assert with_fault(good, "none", 1, 0) is good


def test_slow_fault_delays_only_every_nth_batch():
    import time
    faulty = with_fault(lambda reqs: [[[1.0]]], "slow", every=2, delay_s=0.2)
    t0 = time.monotonic(); faulty([1]); t1 = time.monotonic(); faulty([1]); t2 = time.monotonic()  # noqa: E702
    assert t1 - t0 < 0.1 and t2 - t1 >= 0.2


def test_ledger_going_backwards_fails_loudly_with_what_to_do():
    check_ledger({"admitted": 5}, 5)
    with pytest.raises(RedisStateLost, match=r"records 0 admitted tasks, this learner admitted 6.*Restart the learner"):
        check_ledger({"admitted": 0}, 6)


def test_a_scorer_fault_travels_pickled_to_a_replica_and_wraps_its_scorer():
    """Serve ships the wrapper with the deployment's arguments: it must survive pickling."""
    import pickle
    fault = pickle.loads(pickle.dumps(ScorerFault("garbage", every=1)))
    [t] = fault(lambda reqs: [[[0.5], [0.6]]])([object()])
    assert len(t) == 2 and all(len(row) == 1 and math.isnan(row[0]) for row in t)  # the first garbage kind


def test_fault_settings_are_not_part_of_the_production_configuration():
    from common.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=r"rewards\.fault"):
        load_config("cpu-tiny", {"rewards": {"fault": "slow"}})
