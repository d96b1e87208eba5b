"""The history naming scheme (common/rl/history.py) on records written by hand."""
from __future__ import annotations

import pytest

from common.rl.history import bad_keys


def test_a_record_in_the_scheme_has_no_bad_keys():
    record = {"step": 3, "version": 3, "losses/loss": 0.1, "losses/grad_norm": 2.0, "reward/subjects/mean": 0.4,
              "reward/subjects/std": 0.1, "reward/scene-2/n3": 0.2, "signals/drs_tau": 0.0, "time/consume_s": 1.5,
              "data/images": 16, "eval/placement/all": 0.3, "eval/background_error/2": 0.04}
    assert bad_keys(record) == []


@pytest.mark.parametrize("bad", ["kl", "reward/subjects", "reward/subjects_std", "seconds/consume", "time/consume",
                                 "generator/sample_s", "eval/placement", "losses/Loss", "signals/", "misc/x"])
def test_the_old_and_the_malformed_names_are_caught(bad):
    assert bad_keys({"step": 1, bad: 0.0}) == [bad]
