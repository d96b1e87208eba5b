"""write_split / load_split: both record formats, the OmniRef path convention, round trip."""
from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

import numpy as np
import pytest

from common.synthetic import load_split, make_train_test, placement_accuracy, write_split

_ROLE_OF = [(r"/transfer_subjects/[^/]+\.png$", "subject"), (r"/style/reference\.png$", "style"),
            (r"/background/background\.png$", "background"), (r"/lighting/lighting_reference\.jpeg$", "lighting"),
            (r"/pose/skeleton/[^/ ]+\.png$", "pose")]


def _role(path: str) -> str:
    hits = [role for pat, role in _ROLE_OF if re.search(pat, path)]
    assert len(hits) == 1, path
    return hits[0]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    train, test = make_train_test(60, 40, seed=2, size=32, ref_size=24)
    files = {"train": write_split(train, root, "train"), "test": write_split(test, root, "test")}
    return root, {"train": train, "test": test}, files


def test_training_records(written):
    root, cases, files = written
    for split in ("train", "test"):
        lines = files[split].jsonl.read_text().splitlines()
        assert len(lines) == len(cases[split])
        for line, c in zip(lines, cases[split]):
            rec = json.loads(line)
            assert {"image", "prompt", "edit_image", "index", "is_style", "is_test"} <= set(rec)
            assert rec["index"] == c.index and rec["prompt"] == c.prompt
            assert rec["is_test"] == (split == "test") and rec["is_style"] == ("style" in c.category)
            assert [_role("/" + p) for p in rec["edit_image"]] == [r for r, _, _ in c.references]
            for p in [rec["image"], *rec["edit_image"]]:
                pp = PurePosixPath(p)
                assert not pp.is_absolute() and ".." not in pp.parts
                assert (files[split].image_dir / p).is_file()
        assert len({json.loads(x)["index"] for x in lines}) == len(lines)


def test_bench_metadata_follows_the_omniref_convention(written):
    root, cases, files = written
    meta = json.loads(files["test"].metadata.read_text())
    assert isinstance(meta, list) and len(meta) == len(cases["test"])
    for item, c in zip(meta, cases["test"]):
        assert set(item) == {"image", "prompt", "edit_image", "index", "category"}
        for p in item["edit_image"]:
            cat, n, case_id = PurePosixPath(p).parts[:3]
            assert (cat, int(n), case_id) == (c.category, len(item["edit_image"]), c.case_id)
        if c.spec.pose is not None:
            posed = c.spec.subjects[c.spec.pose.subject].name.replace(" ", "_")
            assert any(p.endswith(f"/pose/skeleton/{posed}.png") for p in item["edit_image"])


def test_round_trip(written):
    root, cases, files = written
    for split in ("train", "test"):
        back = load_split(root, split)
        assert len(back) == len(cases[split])
        for a, b in zip(cases[split], back):
            assert (a.index, a.category, a.prompt, a.case_id, a.spec) == (b.index, b.category, b.prompt, b.case_id, b.spec)
            assert a.metadata == b.metadata
            assert np.array_equal(np.asarray(a.target), np.asarray(b.target))
            for (ra, ia, na), (rb, ib, nb) in zip(a.references, b.references):
                assert (ra, na) == (rb, nb) and ia.size == ib.size
                diff = np.abs(np.asarray(ia, int) - np.asarray(ib, int))
                # PNG is exact; the lighting reference is a JPEG (quality 95) as in the benchmark
                assert diff.max() == 0 if ra != "lighting" else diff.mean() < 3
            assert placement_accuracy(b.target, b) == 1.0


def test_refusals(tmp_path, written):
    _, cases, _ = written
    with pytest.raises(ValueError, match="split name"):
        write_split(cases["test"][:1], tmp_path, "../escape")
    dup = [cases["test"][0], cases["test"][0]]
    with pytest.raises(ValueError, match="duplicate index"):
        write_split(dup, tmp_path, "dup")
    (tmp_path / "alien.jsonl").write_text(json.dumps({"image": "a.png", "prompt": "x", "edit_image": [], "index": 0}) + "\n")
    with pytest.raises(ValueError, match="synthetic"):
        load_split(tmp_path, "alien")


def test_the_benchmark_loader_reads_both_files_unchanged(written):
    # the loader common/bench builds from docs/benchmark.md §2 (roles from paths, index-keyed)
    from common.bench.loader import load_metadata, load_train_records, resolve_image

    root, cases, files = written
    for load, path in ((load_metadata, files["test"].metadata), (load_train_records, files["test"].jsonl)):
        bench = load(path)
        assert len(bench) == len(cases["test"])
        for c in cases["test"]:
            b = bench[c.index]
            assert b.category == c.category and b.prompt == c.prompt and b.n_refs == c.n_refs
            assert [(r, n) for r, _, n in b.references] == [(r, n) for r, _, n in c.references]
            assert resolve_image(files["test"].image_dir, b.target).is_file()
