"""Prompts call every reference by number exactly once, name subjects and slots, and shuffle."""
from __future__ import annotations

import re
from collections import Counter

from common.synthetic import make_split

_REF = re.compile(r"\b(?:reference )?image (\d+)\b")


def test_every_reference_number_exactly_once_and_names_present():
    cases = make_split("train", 300, seed=11, size=16)
    for c in cases:
        nums = [int(x) for x in _REF.findall(c.prompt)]
        assert sorted(nums) == list(range(1, c.n_refs + 1)), c.prompt
        assert len(re.findall(r"\d+", c.prompt)) == c.n_refs          # no stray numbers
        for i, (role, _, name) in enumerate(c.references, 1):
            if role == "subject":   # a subject clause names it next to its own number and its slot
                s = next(s for s in c.spec.subjects if s.name == name)
                clause = re.search(rf"{re.escape(name)}[^.,]*?image {i}\b[^.,]*?at the {s.slot}\b", c.prompt, re.I)
                assert clause, (name, i, c.prompt)
        if c.spec.pose is not None:
            posed = c.spec.subjects[c.spec.pose.subject].name.split(" ", 1)[1]
            k = [r for r, _, _ in c.references].index("pose") + 1
            assert re.search(rf"the {re.escape(posed)}\b[^.]*image {k}\b", c.prompt, re.I), c.prompt


def test_reference_and_clause_order_are_shuffled():
    cases = make_split("train", 300, seed=12, size=16, categories=["subject_bg_style"], count_weights={4: 1})
    first_role = Counter(c.references[0][0] for c in cases)
    assert set(first_role) == {"subject", "background", "style"}
    # the first sentence is not always about the same role
    first_sentence = Counter("background" in c.prompt.split(".")[0] or "backdrop" in c.prompt.split(".")[0]
                             for c in cases)
    assert len(first_sentence) == 2
    assert len({c.prompt for c in cases}) == len(cases)
