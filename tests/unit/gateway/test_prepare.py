"""Request validation: limits, field names, URL allow-list and the bounded URL fetch (local HTTP server)."""
from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from common.config import GatewayConfig
from services.gateway.errors import APIError
from services.gateway.prepare import RefIn, check_url, fetch_url, parse_size, prepare_job


def _png(side=32, colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


def _err(fn, *a, **kw) -> APIError:
    with pytest.raises(APIError) as ei:
        fn(*a, **kw)
    return ei.value


def test_check_url_allow_list():
    assert check_url("https://img.example.com/a.png", ["img.example.com"], "p") == "img.example.com"
    assert check_url("http://cdn.example.com/a.png", ["*.example.com"], "p") == "cdn.example.com"
    e = _err(check_url, "https://evil.com/a.png", ["*.example.com"], "references[0].image")
    assert (e.code, e.param) == ("url_not_allowed", "references[0].image")
    assert _err(check_url, "https://example.com.evil.com/", ["example.com"], "p").code == "url_not_allowed"
    assert _err(check_url, "file:///etc/passwd", ["*"], "p").code == "invalid_url"
    assert _err(check_url, "https://u:pw@img.example.com/", ["img.example.com"], "p").code == "invalid_url"
    assert _err(check_url, "https://img.example.com/", [], "p").code == "url_not_allowed"  # empty list: nothing


def test_parse_size():
    assert parse_size("512x256") == (512, 256)
    assert parse_size("auto") == (None, None) and parse_size(None) == (None, None)
    assert _err(parse_size, "large").param == "size"


def test_prepare_limits_name_their_fields():
    cfg = GatewayConfig(max_references=2, max_n=2, max_side=128, max_steps=10)
    ok = RefIn(role="subject", data=_png(), param="references[0].image")
    job = prepare_job(cfg, prompt="p", refs=[ok], n=2, width=32, height=48, seed=5, steps=3)
    assert (job.n, job.width, job.height, job.seed, job.steps) == (2, 32, 48, 5, 3)
    assert job.refs[0][0] == "subject" and job.refs[0][1].shape == (32, 32, 3)
    cases = [
        (dict(prompt=None, refs=[]), "prompt"),
        (dict(prompt="p", refs=[ok] * 3), "references"),
        (dict(prompt="p", refs=[RefIn(role="wig", data=_png(), param="x")]), "references[0].role"),
        (dict(prompt="p", refs=[], n=3), "n"),
        (dict(prompt="p", refs=[], width=24), "width"),
        (dict(prompt="p", refs=[], height=144), "height"),
        (dict(prompt="p", refs=[], steps=11), "num_inference_steps"),
        (dict(prompt="p", refs=[], width=24, size_param="size"), "size"),
        (dict(prompt="p", refs=[RefIn(role="style", b64="@@", param="references[0].image")]), "references[0].image"),
    ]
    for kw, param in cases:
        assert _err(prepare_job, cfg, **kw).param == param, kw


def test_references_decode_in_parallel_but_keep_order_and_the_first_error():
    """prepare_job decodes several references at once (services/gateway/prepare.py): the arrays
    still come back in request order, and of two bad references the first is the one reported."""
    cfg = GatewayConfig(max_references=4)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0)]
    refs = [RefIn(role="subject", data=_png(16 + 8 * i, c), param=f"references[{i}].image") for i, c in enumerate(colours)]
    job = prepare_job(cfg, prompt="p", refs=refs)
    assert [a.shape[0] for _, a, _ in job.refs] == [16, 24, 32, 40]
    assert [tuple(int(x) for x in a[0, 0]) for _, a, _ in job.refs] == colours
    bad = [refs[0], RefIn(role="subject", b64="@@", param="references[1].image"), refs[2],
           RefIn(role="subject", data=b"not an image", param="references[3].image")]
    err = _err(prepare_job, cfg, prompt="p", refs=bad)
    assert (err.param, err.code) == ("references[1].image", "invalid_base64")


def test_prepare_accepts_data_urls_and_refuses_urls_by_default():
    cfg = GatewayConfig()
    data_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    job = prepare_job(cfg, prompt="p", refs=[RefIn(role="style", b64=data_url, param="references[0].image")])
    assert job.refs[0][1].shape == (32, 32, 3) and job.seed >= 0
    e = _err(prepare_job, cfg, prompt="p", refs=[RefIn(role="style", b64="https://x.org/a.png", param="references[0].image")])
    assert (e.code, e.param) == ("url_fetch_disabled", "references[0].image")


@pytest.fixture
def image_server():
    png = _png(24)

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/a.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:1/a.png")
                self.end_headers()
            else:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"x" * 5000)

        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_url_fetch_when_enabled(image_server):
    cfg = GatewayConfig(allow_url_fetch=True, url_allow_list=["127.0.0.1"], max_image_bytes=4096)
    job = prepare_job(cfg, prompt="p", refs=[RefIn(role="subject", b64=f"{image_server}/a.png", param="references[0].image")])
    assert job.refs[0][1].shape == (24, 24, 3)
    assert _err(fetch_url, f"{image_server}/redirect", cfg, "p").code == "url_fetch_failed"  # redirects not followed
    assert _err(fetch_url, f"{image_server}/big", cfg, "p").code == "image_too_large"  # streamed, stopped at the limit
    other = GatewayConfig(allow_url_fetch=True, url_allow_list=["images.example.com"])
    assert _err(fetch_url, f"{image_server}/a.png", other, "p").code == "url_not_allowed"
