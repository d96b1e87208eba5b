"""The image-guided subject detector (real data: subject references without boxes).

The tiny OWL-ViT is randomly initialised, so its boxes are arbitrary; what is tested is what the
project adds around the model — which box is picked and how it is converted — against values
worked out from the model's raw outputs, and that the per-reference reward really scores the
subject in the located region.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.config import FieldError, load_config
from common.rewards.detector import SubjectDetector
from common.rewards.per_reference import PerReferenceScorer, ReferenceInput


def square(colour, size=16, bg=(20, 20, 20)):
    im = Image.new("RGB", (size, size), bg)
    im.paste(colour, (3, 3, 13, 13))
    return im


@pytest.fixture(scope="module")
def detector():
    return SubjectDetector.tiny(seed=0)


def test_locate_takes_the_highest_logit_box_and_converts_centre_size_to_corners(detector):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    refs = [square((230, 30, 30)), square((30, 30, 230))]
    found = detector.locate(image, refs)
    with torch.inference_mode():
        raw = detector.model.image_guided_detection(pixel_values=detector._pixels([image]).expand(2, -1, -1, -1),
                                                    query_pixel_values=detector._pixels(refs))
    assert len(found) == 2
    for j, (box, logit) in enumerate(found):
        logits = raw.logits[j, :, 0]
        b = int(torch.argmax(logits))
        assert logit == pytest.approx(float(logits.max()))
        cx, cy, w, h = raw.target_pred_boxes[j, b].tolist()
        expected = [min(max(v, 0.0), 1.0) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]
        assert box == pytest.approx(expected, abs=1e-6)
        assert 0 <= box[0] <= box[2] <= 1 and 0 <= box[1] <= box[3] <= 1


def test_the_tiny_detector_is_deterministic_per_seed():
    image, ref = square((200, 200, 30), 40), square((200, 200, 30))
    a = SubjectDetector.tiny(seed=3).locate(image, [ref])
    b = SubjectDetector.tiny(seed=3).locate(image, [ref])
    assert a == b


class FixedBox:
    """A locator with a known answer: the scorer's use of a located box is what is under test."""

    def __init__(self, box):
        self.box, self.calls = box, 0

    def locate(self, image, references):
        self.calls += 1
        return [(self.box, 1.0) for _ in references]


def test_a_subject_without_a_box_is_scored_in_the_region_the_detector_returns():
    red = square((230, 30, 30))
    img = Image.new("RGB", (32, 32), (20, 20, 20))
    img.paste(red.resize((16, 16)), (16, 0))                # the subject drawn in the top-right quarter
    right, wrong = (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0)
    known = PerReferenceScorer("looks").score([img], [[ReferenceInput("subject", red, right)]])[0][0]
    assert PerReferenceScorer("looks").score([img], [[ReferenceInput("subject", red, None)]]) == [[None]]
    here = PerReferenceScorer("looks", detector=FixedBox(right)).score([img], [[ReferenceInput("subject", red)]])[0][0]
    there = PerReferenceScorer("looks", detector=FixedBox(wrong)).score([img], [[ReferenceInput("subject", red)]])[0][0]
    assert known > 0.9 and here == pytest.approx(known)
    assert there < 0                                       # present only outside its (wrong) box: penalised


def test_a_box_from_the_metadata_is_never_replaced():
    loc = FixedBox((0.0, 0.0, 0.1, 0.1))
    ref = ReferenceInput("subject", square((30, 230, 30)), (0.25, 0.25, 0.75, 0.75))
    PerReferenceScorer("looks", detector=loc).score([square((30, 230, 30), 32)], [[ref]])
    assert loc.calls == 0


def test_the_config_builds_the_tiny_owlvit_and_the_reward_scores_every_subject():
    cfg = load_config("cpu-tiny", {"rewards": {"detector": "owlvit", "reference_backend": "looks"}}).rewards
    scorer = PerReferenceScorer.from_config(cfg)
    assert isinstance(scorer.detector, SubjectDetector)
    refs = [ReferenceInput("subject", square((230, 30, 30))), ReferenceInput("subject", square((30, 30, 230)))]
    row = scorer.score([Image.new("RGB", (32, 32), (20, 20, 20))], [refs])[0]
    assert len(row) == 2 and all(s is not None and -1.0 <= s <= 1.0 for s in row)


def test_a_pretrained_detector_without_weights_is_refused_at_load_naming_the_field():
    with pytest.raises((FieldError, ValueError)) as e:
        load_config("cpu-tiny", {"rewards": {"detector": "owlvit", "source": "pretrained", "detector_path": None}})
    assert "rewards.detector_path" in str(e.value)
