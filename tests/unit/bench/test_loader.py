"""OmniRef-Bench loader: shipped statistics, index lookup, roles, path traversal."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.bench.loader import (BenchDataError, BenchSet, load_cases, load_metadata, load_train_records,
                                 metadata_stats, parse_record, resolve_image, role_of_path)

OMNI = Path(__file__).resolve().parents[3] / "data" / "omniref"  # shipped in the repo (data/omniref/README.md)
SKELETON = OMNI / "metadata" / "data_our_multibanana_skeleton.json"
MIXTURE = OMNI / "metadata" / "data_our_multibanana_mixture_pose.json"
TEN = {"subject", "subject_bg", "subject_style", "subject_pose", "subject_bg_style", "subject_lighting",
       "subject_pose_bg", "subject_pose_style", "subject_pose_lighting", "subject_pose_bg_style"}


def test_skeleton_file_statistics_match_reference():
    st = metadata_stats(load_metadata(SKELETON))
    assert st["n_cases"] == 396
    assert st["by_n_refs"] == {2: 26, 3: 50, 4: 90, 5: 100, 6: 95, 7: 35}
    assert st["by_category"] == {"subject": 50, "subject_bg": 51, "subject_style": 50, "subject_pose": 45,
                                 "subject_bg_style": 40, "subject_lighting": 40, "subject_pose_bg": 30,
                                 "subject_pose_style": 30, "subject_pose_lighting": 30, "subject_pose_bg_style": 30}
    assert st["roles"] == {"subject": 1341, "style": 150, "background": 151, "lighting": 70, "pose": 165}
    assert st["pose_kinds"] == {"skeleton": 160, "reference": 5}
    assert st["with_target"] == 360
    assert st["n_refs_range"]["subject_pose"] == [2, 6]
    assert st["n_refs_range"]["subject_lighting"] == [3, 6]
    assert st["n_refs_range"]["subject_pose_bg_style"] == [5, 7]


def test_mixture_file_statistics():
    # The mixture file holds index 375 (subject, 6 refs) where the skeleton file holds index 405
    # (subject_bg, 2 refs): the "one item swapped between subject and subject_bg" of docs/benchmark.md
    # §2. Hence its count distribution differs from the skeleton file's by one at 2 and 6.
    st = metadata_stats(load_metadata(MIXTURE))
    assert st["n_cases"] == 396
    assert set(st["by_category"]) == TEN
    assert st["by_category"]["subject"] == 51 and st["by_category"]["subject_bg"] == 50
    assert st["by_n_refs"] == {2: 25, 3: 50, 4: 90, 5: 100, 6: 96, 7: 35}
    assert st["pose_kinds"] == {"skeleton": 77, "reference": 88}
    assert st["roles"]["pose"] == 165 and st["roles"]["lighting"] == 70
    sk, mx = load_metadata(SKELETON), load_metadata(MIXTURE)
    assert set(sk.indices()) ^ set(mx.indices()) == {375, 405}


def test_roles_names_and_counts_from_paths():
    cases = load_metadata(SKELETON)
    c0 = cases[0]
    assert c0.category == "subject_bg_style" and c0.n_refs == 4
    assert c0.roles() == ["subject", "subject", "style", "background"]
    assert [n for _, _, n in c0.refs_of("subject")] == ["a wild rabbit", "a child"]
    assert c0.target == "subject_bg_style/4/0/0.png"
    last = cases[434]
    assert last.roles() == ["subject", "pose"] and last.target is None
    assert role_of_path("x/3/1/pose/reference/a.jpg") == "pose"
    assert role_of_path("x/3/1/pose/skeleton/a.jpg") == "pose"
    assert role_of_path("x/3/1/lighting/lighting_reference.jpeg") == "lighting"
    with pytest.raises(BenchDataError, match="role"):
        role_of_path("x/3/1/pose/other/a.jpg")


def test_lookup_is_by_index_not_position():
    # the shipped file: list positions 365-395 carry indices 370-434
    data = json.loads(SKELETON.read_text())
    cases = load_metadata(SKELETON)
    assert data[365]["index"] == 370
    assert cases[370].prompt == data[365]["prompt"]
    with pytest.raises(KeyError, match="no case with index 365"):
        cases[365]
    # a constructed list whose index differs from position
    recs = [{"prompt": f"p{i}", "index": i * 10 + 3, "category": "subject",
             "edit_image": [f"subject/2/{i}/transfer_subjects/a.png", f"subject/2/{i}/transfer_subjects/b.png"]}
            for i in range(3)][::-1]
    s = BenchSet(parse_record(r) for r in recs)
    assert s[3].prompt == "p0" and s[23].prompt == "p2"
    assert [c.index for c in s] == [23, 13, 3]
    with pytest.raises(KeyError):
        s[0]


def test_bad_records_give_clear_errors(tmp_path):
    good = {"prompt": "p", "index": 1, "category": "subject",
            "edit_image": ["subject/2/0/transfer_subjects/a.png", "subject/2/0/transfer_subjects/b.png"]}
    with pytest.raises(BenchDataError, match="says 3 references but edit_image has 2"):
        parse_record({**good, "edit_image": ["subject/3/0/transfer_subjects/a.png", "subject/3/0/style/reference.png"]})
    with pytest.raises(BenchDataError, match="missing field 'prompt'"):
        parse_record({k: v for k, v in good.items() if k != "prompt"})
    with pytest.raises(BenchDataError, match="duplicate index 1"):
        BenchSet([parse_record(good), parse_record(good)])
    p = tmp_path / "m.json"
    p.write_text("{not json")
    with pytest.raises(BenchDataError, match="not valid JSON"):
        load_metadata(p)


def test_train_format_loads():
    s = load_train_records(OMNI / "train_format" / "train.jsonl")
    t = load_cases(OMNI / "train_format" / "test.jsonl")
    assert len(s) == 64 and len(t) == 64
    c = next(iter(s))
    assert c.target.endswith("style/target.png") and "style" in c.roles()
    assert c.extra == {"is_style": True, "is_test": False}
    assert all(x.category.startswith("subject") and "style" in x.category for x in s)
    assert metadata_stats(s)["by_n_refs"] == {3: 27, 4: 37}


def test_path_traversal_rejected(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ok.png").write_bytes(b"x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "a" / "link.png")
    assert resolve_image(root, "a/ok.png") == (root / "a" / "ok.png").resolve()
    with pytest.raises(BenchDataError, match="absolute"):
        resolve_image(root, str(outside))
    with pytest.raises(BenchDataError, match=r"'\.\.'"):
        resolve_image(root, "a/../../secret.png")
    with pytest.raises(BenchDataError, match="outside the image root"):
        resolve_image(root, "a/link.png")
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_image(root, "a/none.png")
