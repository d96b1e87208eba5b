"""One error envelope, filled in everywhere, over real HTTP (uvicorn + the real app + a real
GeneratorCore): issue 20, item 6. `param` names the body for unparsable bodies; no Pillow text and
no exception class name reaches the client; NaN is "not a finite number"; OpenAI's quality /
background are refused by name (auto accepted); MIME base64 (line breaks) is accepted."""
from __future__ import annotations

import base64
import io
import re
import struct
import zlib

import httpx
import pytest
from PIL import Image

from common.config import GatewayConfig
from services.gateway.api import build_api
from services.gateway.deployments import LocalBackend

CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Timeout)\b")
PILLOW_WORDS = ("decompression bomb", "DOS attack", "Image size (", "image file is truncated", "cannot identify")


def _png(side=32, colour=(1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(side: int = 100_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def http(core, http_gateway):
    gw = http_gateway(build_api(GatewayConfig(max_image_pixels=300 * 300), LocalBackend(core), None))
    with httpx.Client(base_url=gw.url, timeout=120) as c:
        yield c


def _err(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "code", "message", "param"}, body
    err = body["error"]
    assert not CLASS_NAME.search(err["message"]), err
    assert not any(w.lower() in err["message"].lower() for w in PILLOW_WORDS), err
    return err


JSON = {"content-type": "application/json"}


def test_unparsable_bodies_name_the_body(http):
    cases = {
        "deep JSON": ("/v1/generations", b"[" * 100_000 + b"]" * 100_000, JSON, "json_too_deep"),
        "deep JSON in a field": ("/v1/generations", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON,
                                 "json_too_deep"),
        "invalid UTF-8": ("/v1/generations", b'{"prompt": "\xff\xfe"}', JSON, "invalid_utf8"),
        "form without boundary": ("/v1/generations/form", b"abc", {"content-type": "multipart/form-data"},
                                  "invalid_multipart"),
        "edits without boundary": ("/v1/images/edits", b"abc", {"content-type": "multipart/form-data"},
                                   "invalid_multipart"),
    }
    for name, (path, body, headers, code) in cases.items():
        r = http.post(path, content=body, headers=headers)
        err = _err(r)
        assert (r.status_code, err["param"], err["code"]) == (400, "body", code), (name, err)


def test_no_pillow_text_or_class_name_reaches_the_client(http):
    truncated = _png(64)[:80]
    for name, data, code in (("bomb", _bomb_png(), "image_too_many_pixels"), ("truncated", truncated, "invalid_image"),
                             ("garbage", b"GIF89a" + b"\0" * 50, "invalid_image")):
        r = http.post("/v1/generations", json={"prompt": "x", "references": [
            {"role": "subject", "image": base64.b64encode(data).decode()}]})
        err = _err(r)
        assert (r.status_code, err["code"], err["param"]) == (400, code, "references[0].image"), (name, err)
    r = http.post("/v1/images/edits", data={"prompt": "x"}, files={"image[]": ("a.png", _bomb_png(), "image/png")})
    err = _err(r)
    assert err["code"] == "image_too_many_pixels" and "90000 pixels" in err["message"], err


def test_nan_is_not_a_finite_number(http):
    for r in (http.post("/v1/generations", content=b'{"prompt": "x", "guidance_scale": NaN}', headers=JSON),
              http.post("/v1/generations", content=b'{"prompt": "x", "guidance_scale": Infinity}', headers=JSON),
              http.post("/v1/generations/form", data={"prompt": "x", "guidance_scale": "nan"})):
        err = _err(r)
        assert r.status_code == 400 and err["param"] == "guidance_scale", err
        assert "finite" in err["message"] and "30" not in err["message"], err


def test_openai_quality_and_background_are_refused_by_name_auto_accepted(http):
    img = {"image[]": ("a.png", _png(), "image/png")}
    for field, value in (("quality", "high"), ("background", "transparent")):
        r = http.post("/v1/images/edits", data={"prompt": "x", field: value}, files=img)
        err = _err(r)
        assert (r.status_code, err["param"], err["code"]) == (400, field, f"unsupported_{field}"), err
    r = http.post("/v1/images/edits", data={"prompt": "x", "quality": "auto", "background": "auto", "size": "32x32"},
                  files=img)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 1


def test_mime_base64_with_line_breaks_is_accepted(http):
    mime = base64.encodebytes(_png()).decode()  # 76-character lines, \n-terminated, as MIME encoders write
    assert "\n" in mime.strip()
    body = {"prompt": "x", "num_inference_steps": 1, "width": 32, "height": 32,
            "references": [{"role": "subject", "image": mime.replace("\n", "\r\n")}]}
    r = http.post("/v1/generations", json=body)
    assert r.status_code == 200, r.text
    r = http.post("/v1/generations", json=body | {"references": [{"role": "subject", "image": "@@" + mime}]})
    assert _err(r)["code"] == "invalid_base64"
