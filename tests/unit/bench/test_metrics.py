"""Bench metric scorers: lighting via common.rewards.lighting, pose formula, subject/background/style
with tiny offline embedders, honest notes when no detector / pose model is configured."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.bench.loader import parse_record
from common.bench.metrics import (BackgroundScorer, LightingMetric, PoseScorer, StyleEmbeddingScorer,
                                  SubjectFidelityScorer, pose_consistency)


def _case(category, dirs):
    n = len(dirs)
    return parse_record({"prompt": "p", "index": 3, "category": category,
                         "edit_image": [f"{category}/{n}/0/{d}" for d in dirs]})


LIGHT = _case("subject_lighting", ["transfer_subjects/a cat.png", "lighting/lighting_reference.jpeg"])


def _img(seed, size=64):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_lighting_identical_images_score_100_and_applies_only_with_lighting():
    m = LightingMetric()
    img = _img(0)
    assert m.score(LIGHT, img, [("subject", _img(1), "a cat"), ("lighting", img.copy(), "lighting_reference")]) \
        == {"lighting": pytest.approx(100.0, abs=1e-9)}
    assert not m.applies(_case("subject", ["transfer_subjects/a.png", "transfer_subjects/b.png"]))
    # black vs white: luminance 0, colour temp 1, contrast 1 (both c = 0), light_dist 1, shadow 0 -> 60
    assert m.score(LIGHT, Image.new("RGB", (64, 64), (0, 0, 0)),
                   [("lighting", Image.new("RGB", (64, 64), (255, 255, 255)), "l")])["lighting"] == pytest.approx(60.0)


def test_pose_formula_identity_and_mirror():
    rng = np.random.default_rng(0)
    kp = np.concatenate([rng.uniform(0, 100, (17, 2)), np.ones((17, 1))], axis=1)
    same = pose_consistency(kp, kp)
    assert same["score"] == pytest.approx(1.0) and same["oks"] == pytest.approx(1.0)
    # translation + uniform scale leave every term unchanged
    moved = kp.copy()
    moved[:, :2] = kp[:, :2] * 2.5 + 40
    assert pose_consistency(moved, kp)["score"] == pytest.approx(1.0)
    # rotating the pose 180 degrees flips every limb: angle term 0
    rot = kp.copy()
    rot[:, :2] = -kp[:, :2]
    assert pose_consistency(rot, kp)["angle"] == pytest.approx(0.0, abs=1e-12)
    assert pose_consistency(np.zeros((17, 3)), kp)["score"] == 0.0          # nothing visible
    with pytest.raises(ValueError, match=r"\[17, 3\]"):
        pose_consistency(np.zeros((5, 3)), kp)


def test_pose_not_evaluated_without_model():
    s = PoseScorer(None)
    case = _case("subject_pose", ["transfer_subjects/a man.png", "pose/skeleton/a man.png"])
    assert not s.applies(case)
    assert s.notes == ["pose: not evaluated (no pose model configured)"]


@pytest.fixture(scope="module")
def tiny_embedders():
    from common.rewards.embedding import EmbeddingModel
    return EmbeddingModel.tiny("clip", "pooler", seed=1), EmbeddingModel.tiny("dinov2", "mean", seed=2)


def test_subject_fidelity_whole_image_without_detector(tiny_embedders):
    clip, dino = tiny_embedders
    s = SubjectFidelityScorer(clip, dino)
    assert "no detector: whole image used" in s.notes[0]
    case = _case("subject", ["transfer_subjects/a.png", "transfer_subjects/b.png"])
    a, b = _img(1), _img(2)
    out = s.score(case, a, [("subject", a.copy(), "a"), ("subject", a.copy(), "b")])
    assert out["clip_i"] == pytest.approx(1.0, abs=1e-5) and out["dino"] == pytest.approx(1.0, abs=1e-5)
    mixed = s.score(case, a, [("subject", a.copy(), "a"), ("subject", b, "b")])
    assert mixed["clip_i"] < 1.0 - 1e-4


def test_subject_detector_miss_scores_zero_and_crop_used(tiny_embedders):
    clip, dino = tiny_embedders

    class BoxDetector:  # finds "a." in the left half, nothing else
        def detect(self, image, caption):
            return [(0.9, (0, 0, 32, 64))] if caption == "a." else []

    s = SubjectFidelityScorer(clip, dino, BoxDetector())
    assert s.notes == []
    case = _case("subject", ["transfer_subjects/a.png", "transfer_subjects/b.png"])
    img = _img(4)
    crop = img.crop((0, 0, 42, 64))                       # box ±10 px padding, clipped to the image
    out = s.score(case, img, [("subject", crop, "a"), ("subject", crop, "b")])
    assert out["clip_i"] == pytest.approx(0.5, abs=1e-5)  # (1 + 0) / 2: the missed subject counts 0


def test_background_and_style_apply_by_role(tiny_embedders):
    from common.rewards.style import GramStyleEmbedder, StyleScorer
    clip, _ = tiny_embedders
    bg = BackgroundScorer(clip)
    st = StyleEmbeddingScorer(StyleScorer(GramStyleEmbedder()))
    case = _case("subject_bg_style", ["transfer_subjects/a.png", "style/reference.png", "background/background.png"])
    plain = _case("subject", ["transfer_subjects/a.png", "transfer_subjects/b.png"])
    assert bg.applies(case) and st.applies(case) and not bg.applies(plain) and not st.applies(plain)
    img = _img(5)
    refs = [("subject", _img(6), "a"), ("style", img.copy(), "reference"), ("background", img.resize((40, 40)), "bg")]
    assert st.score(case, img, refs)["style"] == pytest.approx(1.0, abs=1e-5)
    assert bg.score(case, img, refs)["background_clip"] > 0.9
    assert "whole image" in bg.notes[0]
