"""Generation runner: resumable, atomic, by index, over a local policy object or a gateway over HTTP."""
from __future__ import annotations

import base64
import io
import json
import pytest
from json_server import JsonServer
from PIL import Image

from common.bench.loader import BenchDataError, BenchSet, parse_record
from common.bench.runner import (GatewayGenerator, GenerationSettings, RunMismatchError, image_path, is_valid_image,
                                 run_generation)


def _write_cases(root, n=3, start_index=100):
    recs = []
    for i in range(n):
        paths = [f"subject_style/2/{i}/transfer_subjects/a red ball.png", f"subject_style/2/{i}/style/reference.png"]
        for p, colour in zip(paths, [(200, 0, 0), (0, 0, 200)]):
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), colour).save(root / p)
        recs.append({"prompt": f"case {i}", "index": start_index + 7 * i, "category": "subject_style", "edit_image": paths})
    return BenchSet(parse_record(r) for r in recs)


class _Gateway(JsonServer):
    """A real HTTP server answering POST /v1/generations with an image whose colour encodes the seed."""

    def __init__(self):
        def answer(path: str, body: dict) -> tuple[int, dict]:
            assert path == "/v1/generations"
            buf = io.BytesIO()
            Image.new("RGB", (body["width"], body["height"]), (body["seed"] % 256, len(body["references"]), 7)).save(buf, "PNG")
            return 200, {"id": "x", "status": "succeeded", "images": [
                {"b64_json": base64.b64encode(buf.getvalue()).decode(), "width": body["width"],
                 "height": body["height"], "seed": body["seed"]}]}
        super().__init__(answer)


def test_gateway_generation_resume_and_atomic(tmp_path):
    root = tmp_path / "imgs"
    cases = _write_cases(root)
    gw = _Gateway()
    settings = GenerationSettings(seed=1, width=32, height=48, num_inference_steps=3)
    try:
        gen = GatewayGenerator(gw.url)
        r1 = run_generation(cases, gen, root, tmp_path / "run", settings, progress=False)
        assert sorted(r1.generated) == [100, 107, 114] and not r1.failed
        body = gw.bodies[0]
        assert body["seed"] == 1 and body["num_inference_steps"] == 3 and body["prompt"] == "case 0"
        assert [(r["role"], r["description"]) for r in body["references"]] == [("subject", "a red ball"), ("style", "reference")]
        ref0 = Image.open(io.BytesIO(base64.b64decode(body["references"][0]["image"])))
        assert ref0.getpixel((0, 0)) == (200, 0, 0)
        out = Image.open(image_path(tmp_path / "run", 107))
        assert out.size == (32, 48) and out.getpixel((0, 0)) == (1, 2, 7)
        mtimes = {i: image_path(tmp_path / "run", i).stat().st_mtime_ns for i in cases.indices()}

        # resume: nothing regenerated, files untouched
        r2 = run_generation(cases, gen, root, tmp_path / "run", settings, progress=False)
        assert r2.generated == [] and sorted(r2.skipped) == [100, 107, 114] and len(gw.bodies) == 3
        assert mtimes == {i: image_path(tmp_path / "run", i).stat().st_mtime_ns for i in cases.indices()}

        # a truncated image (crash mid-write in a non-atomic writer) is not trusted
        p = image_path(tmp_path / "run", 114)
        p.write_bytes(p.read_bytes()[:40])
        assert not is_valid_image(p)
        r3 = run_generation(cases, gen, root, tmp_path / "run", settings, progress=False)
        assert r3.generated == [114] and is_valid_image(p)
        assert not list((tmp_path / "run" / "images").glob(".*.tmp"))

        with pytest.raises(RunMismatchError, match="settings"):
            run_generation(cases, gen, root, tmp_path / "run", GenerationSettings(seed=2, width=32, height=48), progress=False)
    finally:
        gw.close()


def test_failed_case_recorded_and_traversal_aborts(tmp_path):
    root = tmp_path / "imgs"
    cases = list(_write_cases(root, n=2))
    (root / cases[1].references[1][1]).unlink()                   # one missing reference image
    gw = _Gateway()
    try:
        r = run_generation(cases, GatewayGenerator(gw.url), root, tmp_path / "run", GenerationSettings(), progress=False)
        assert r.generated == [100] and list(r.failed) == [107] and "not found" in r.failed[107]
        assert json.loads((tmp_path / "run" / "failures.json").read_text()) == {"107": r.failed[107]}
        bad = parse_record({"prompt": "p", "index": 9, "category": "subject",
                            "edit_image": ["subject/2/0/transfer_subjects/../../../../etc/passwd.png",
                                           "subject/2/0/transfer_subjects/b.png"]})
        with pytest.raises(BenchDataError, match=r"'\.\.'"):
            run_generation([bad], GatewayGenerator(gw.url), root, tmp_path / "run2", GenerationSettings(), progress=False)
    finally:
        gw.close()
