"""Planning of data-parallel steps (services/learner/parallel.py), checked against hand-worked plans."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from services.learner.parallel import WorkItem, assign_groups, minibatch_work, repeated_blocks, split_batch


def test_groups_go_longest_first_to_the_least_loaded_worker():
    # terms 2,1,1,2 -> order b0(2) b3(2) b1(1) b2(1): b0->0, b3->1, b1->0 (tie 2:2, lower rank), b2->1
    assert assign_groups([2, 1, 1, 2], 2) == [0, 0, 1, 1]
    # one long group: the short ones all go to the other worker until it catches up
    assert assign_groups([3, 1, 1, 1], 2) == [0, 1, 1, 1]
    assert assign_groups([1, 1, 1], 1) == [0, 0, 0]


def test_a_worker_pads_to_the_busiest_workers_passes_at_weight_zero():
    terms, owners = [2, 1, 1], [0, 1, 1]
    # chunk {0, 1}: worker 0 trains group 0's two steps; worker 1 group 1's one step, then pads once
    assert minibatch_work([0, 1], terms, owners, 0, 2, held=0) == ([WorkItem(0, 0, 1.0), WorkItem(0, 1, 1.0)], 3)
    assert minibatch_work([0, 1], terms, owners, 1, 2, held=1) == ([WorkItem(1, 0, 1.0), WorkItem(1, 0, 0.0)], 3)
    # chunk {2}: worker 0 owns nothing in it and pads with a group it holds
    assert minibatch_work([2], terms, owners, 0, 2, held=0) == ([WorkItem(0, 0, 0.0)], 1)


def _group(n_steps):
    return SimpleNamespace(rollout=SimpleNamespace(step_indices=torch.arange(n_steps)))


def test_a_batch_smaller_than_the_worker_count_gives_the_idle_worker_a_group_to_pad_with():
    g = [_group(1)]
    a, b = split_batch(g, 2)
    assert a.owners == b.owners == [0] and a.terms == [1]
    assert list(a.groups) == [0] and list(b.groups) == [0] and b.held == 0
    # worker 1 only ever pads: no real term of group 0 is trained twice
    assert minibatch_work([0], b.terms, b.owners, 1, 2, b.held) == ([WorkItem(0, 0, 0.0)], 1)


def test_each_shard_holds_whole_groups_and_together_they_hold_the_batch_once():
    groups = [_group(n) for n in (2, 1, 2, 1)]
    shards = split_batch(groups, 2)
    owned = sorted(b for s in shards for b in s.groups)
    assert owned == [0, 1, 2, 3]
    assert all(s.groups[b] is groups[b] for s in shards for b in s.groups)


def test_the_repeated_blocks_are_the_members_of_the_outermost_module_lists():
    inner = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(2, 2), inner), torch.nn.Linear(2, 2)])
    model = torch.nn.ModuleDict({"blocks": blocks, "empty": torch.nn.ModuleList([torch.nn.ReLU()]),
                                 "head": torch.nn.Linear(2, 2)})
    assert repeated_blocks(model) == [blocks[0], blocks[1]]
