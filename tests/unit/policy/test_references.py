import io

import pytest
from PIL import Image

from common.roles import ROLES
from common.images import ImageError, encode_image
from common.policy.references import (InvalidReferenceError, ReferenceError_, TooManyReferencesError,
                                      UnknownRoleError, compile_references, flux_reference_offsets,
                                      flux_reference_size, qwen_preamble, qwen_reference_sizes)
from common.schemas import Reference

from .conftest import rand_image


def test_keeps_user_order_and_mixed_inputs():
    a, b = rand_image(30, 50, 1), rand_image(70, 20, 2)
    refs = [("style", a), Reference(role="subject", image=encode_image(b), description="a dog"), ("pose", a)]
    c = compile_references(refs, max_references=10)
    assert c.roles == ["style", "subject", "pose"]
    assert [im.size for im in c.images] == [(30, 50), (70, 20), (30, 50)]
    assert c.descriptions == [None, "a dog", None]
    assert list(c.images[1].getdata()) == list(b.getdata())  # PNG bytes decode losslessly


def test_ten_references_of_every_role():
    refs = [(ROLES[i % len(ROLES)], rand_image(16 + 8 * i, 64 - 4 * i, i)) for i in range(10)]
    c = compile_references(refs, max_references=10)
    assert len(c) == 10 and c.roles == [r for r, _ in refs]


def test_errors_are_clear_value_errors():
    img = rand_image(32, 32)
    with pytest.raises(TooManyReferencesError, match="11 references given; at most 10"):
        compile_references([("subject", img)] * 11, max_references=10)
    with pytest.raises(UnknownRoleError, match="reference 2: unknown role 'mood'"):
        compile_references([("subject", img), ("mood", img)], max_references=10)
    with pytest.raises(ImageError, match=r"reference 1 \(style\): not a readable image"):
        compile_references([("style", b"definitely not a png")], max_references=10)
    with pytest.raises(InvalidReferenceError, match="reference 1"):
        compile_references([img], max_references=10)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with pytest.raises(ImageError, match="reference 1 \\(subject\\)"):
        compile_references([("subject", buf.getvalue()[:60])], max_references=10)  # truncated PNG
    for cls in (TooManyReferencesError, UnknownRoleError, InvalidReferenceError, ImageError):
        assert issubclass(cls, ValueError)
    assert issubclass(UnknownRoleError, ReferenceError_)


def test_qwen_preamble_matches_the_pipeline_template():
    assert qwen_preamble(0) == ""
    assert qwen_preamble(2) == ("Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
                                "Picture 2: <|vision_start|><|image_pad|><|vision_end|>")


def test_reference_sizes():
    im = Image.new("RGB", (256, 82))
    (vw, vh), (ew, eh) = qwen_reference_sizes(im, 64, 32)
    assert vw % 32 == 0 and vh % 32 == 0 and ew % 32 == 0 and eh % 32 == 0
    assert vw > vh and min(vw, vh, ew, eh) >= 32
    assert qwen_reference_sizes(Image.new("RGB", (1000, 10)), 32, 32)[1][1] == 32  # never 0
    w, h = flux_reference_size(im, 64, 16)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 64 * 64 and w > h
    assert flux_reference_size(Image.new("RGB", (40, 24)), 64, 16) == (32, 16)  # small: never enlarged
    assert flux_reference_size(Image.new("RGB", (5, 5)), 64, 16) == (16, 16)
    assert flux_reference_offsets(3) == [10, 20, 30]
