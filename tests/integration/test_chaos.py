"""The chaos scenarios (dyref.chaos) through the real stack: Redis, Ray actors, Serve, a learner.

Each scenario is bounded in time and ends in the exact ledger check (audit + an independent walk
over every admitted task id): zero lost, zero double-counted groups. The scenarios that fit the CI
budget run by default (~3 min on 2 cores); the rest are marked slow (`pytest -m slow`).
The table of a full run is what `dyref chaos run` prints.
"""
from __future__ import annotations

import pytest

from dyref.chaos.scenarios import SCENARIOS, run_scenario

pytestmark = pytest.mark.integration



@pytest.mark.parametrize("name", [n if ci else pytest.param(n, marks=pytest.mark.slow)
                                  for n, (_fn, ci, _what) in SCENARIOS.items()])
def test_scenario_loses_and_double_counts_nothing(name, ray_cluster, redis_server, tmp_path):
    o = run_scenario(name, tmp_path, redis_server.url)
    print(f"\n{o.row()}\n{o.checks}")
    assert o.lost == 0 and o.duplicated == 0, f"{name}: lost {o.lost}, duplicated {o.duplicated}: {o.checks}"
    assert o.ok, f"{name}: {o.outcome} {o.checks}"
    if o.audit:  # the audit identity holds, and what is in flight is really in the streams
        a = o.audit
        assert a["admitted"] == a["consumed"] + a["dropped_stale"] + a["dead_lettered"] + a["in_flight"]
        assert o.checks["in_flight_found_in_streams"] == a["in_flight"]
        assert o.checks["distinct_consumed_marks"] == a["consumed"] + a["dropped_stale"]
