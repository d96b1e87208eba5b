"""Staleness: admission capacity and the drop rule."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.rl import admission_capacity, is_stale, version_lag


def test_capacity_hand_computed():
    assert admission_capacity(0, 4) == 4      # fully on-policy: one step's worth in flight
    assert admission_capacity(1, 4) == 8      # defaults: max_staleness 1, 4 groups per step
    assert admission_capacity(2, 24) == 72


def test_lag_and_drop_rule():
    assert version_lag(5, 5) == 0 and version_lag(5, 3) == 2
    assert not is_stale(5, 4, 1) and is_stale(5, 3, 1)
    assert is_stale(5, 4, 0) and not is_stale(5, 5, 0)


def test_bad_input():
    with pytest.raises(ValueError, match="newer"):
        version_lag(3, 4)
    with pytest.raises(ValueError, match="max_staleness"):
        admission_capacity(-1, 4)
    with pytest.raises(ValueError, match="groups_per_step"):
        admission_capacity(1, 0)
    with pytest.raises(ValueError, match="current_version"):
        version_lag(1.5, 1)


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 10))
def test_prop_a_group_is_fresh_for_exactly_max_staleness_plus_one_versions(v, extra, s):
    cur = v + extra
    assert is_stale(cur, v, s) == (extra > s)
    assert sum(not is_stale(c, v, s) for c in range(v, v + s + 5)) == s + 1
