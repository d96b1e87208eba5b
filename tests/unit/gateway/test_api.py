"""The FastAPI app without Ray (LocalBackend around a real GeneratorCore): keys, limits, envelope, metrics."""
from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from common.config import GatewayConfig
from services.gateway.api import build_api
from services.gateway.deployments import LocalBackend


def _png(side=32) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (1, 2, 3)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def client(core):
    def make(**cfg):
        return TestClient(build_api(GatewayConfig(**cfg), LocalBackend(core), None))
    return make


def test_api_keys(client):
    c = client(api_keys=["k1", "k2"])
    body = {"prompt": "x", "num_inference_steps": 1}
    r = c.post("/v1/generations", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert c.post("/v1/generations", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.post("/v1/generations", json=body, headers={"Authorization": "Bearer k2"}).status_code == 200
    assert c.get("/healthz").status_code == 200  # probes stay open
    assert client().post("/v1/generations", json=body).status_code == 200  # no keys configured: open


def test_body_limit_is_413_envelope(client):
    c = client(max_references=1, max_image_bytes=1024)
    r = c.post("/v1/generations", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_async_without_redis_is_refused(client):
    r = client().post("/v1/generations", json={"prompt": "x"}, headers={"Prefer": "respond-async"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Prefer"


def test_every_error_is_the_envelope(client):
    c = client()
    for r in (c.get("/nope"), c.put("/v1/generations"), c.post("/v1/generations", json=[1]),
              c.post("/v1/generations", json={"prompt": "x", "references": [{"role": "subject", "image": _png(), "x": 1}]})):
        err = r.json()["error"]
        assert set(err) == {"type", "code", "message", "param"} and r.status_code in (400, 404, 405)


def test_metrics_count_routes_not_raw_paths(client):
    from prometheus_client import REGISTRY
    c = client()
    c.post("/v1/generations", json={"prompt": "x", "num_inference_steps": 1})
    c.get("/v1/generations/" + "a" * 32)
    text = c.get("/metrics").text
    assert 'route="/v1/generations/{job_id}"' in text and "a" * 32 not in text
    assert REGISTRY.get_sample_value("dyref_gateway_images_total") >= 1
