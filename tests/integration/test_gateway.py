"""The gateway running for real: Ray Serve on loopback, the tiny policy, the embedded Redis.

One Serve instance for the module, two apps whose replicas serve HTTP themselves: "gateway" (the
tested one) and "broken" on its own port (a policy that cannot load: 503). Covers sync, async (202 + poll) and OpenAI-shim requests
on the four real OmniRef example cases, weight switching (and refusing a corrupt version), every
bad input (status + `param`), queue-full 429, the CLI client, a schemathesis fuzz run of the
OpenAPI schema, and the web page in headless Chromium (skipped when no chromium is installed).
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from dyref.launch import wait_for
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXAMPLES = Path(__file__).resolve().parents[2] / "data" / "omniref" / "examples"  # shipped in the repo
CASES = json.loads((EXAMPLES / "cases.json").read_text())

LIMITS = dict(max_references=6, max_image_bytes=200_000, max_image_pixels=300 * 300, max_side=128, max_n=2,
              max_steps=10, queue_limit=2, job_ttl_s=120)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header claiming side x side pixels with almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _case_refs(case) -> list[tuple[str, bytes]]:
    return [(r["role"], (EXAMPLES / r["path"]).read_bytes()) for r in case["references"]]


@pytest.fixture(scope="module")
def gw(redis_server, tmp_path_factory):
    """Serve on a free loopback port; yields a namespace with url, redis client, keys, policy bytes."""
    import torch
    from ray import serve

    from common.config import GatewayConfig, PolicyConfig, RayConfig, RedisConfig
    from common.transport import Keys, connect, free_port
    from services.gateway.deployments import gateway_app, start_gateway
    from dyref.local import init_ray

    torch.set_num_threads(1)
    keys = Keys(namespace=f"tgw{os.getpid()}{int(time.time()) % 100000}")
    rcfg = RedisConfig(url=redis_server.url, namespace=keys.namespace)
    pcfg = PolicyConfig()
    gcfg = GatewayConfig(**LIMITS)
    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=128))
    port = free_port()
    start_gateway(gcfg, pcfg, rcfg, redis_server.url, port=port)
    broken = PolicyConfig(source="pretrained", path=str(tmp_path_factory.mktemp("no-model") / "missing"))
    broken_port = free_port()
    serve.run(gateway_app(gcfg, broken, rcfg.model_copy(update={"namespace": keys.namespace + "b"}), redis_server.url,
                          port=broken_port), name="broken", route_prefix=None)
    # the test's own copy of the policy, for trainable_state bytes to publish (same seed = same weights)
    from common.policy import build_policy
    policy = build_policy(pcfg)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=120)
    assert wait_for(lambda: client.get("/readyz").status_code == 200, 120, 0.25), client.get("/readyz").text
    r = connect(redis_server.url)

    class GW:
        pass
    g = GW()
    g.url, g.http, g.r, g.keys, g.policy, g.port = url, client, r, keys, policy, port
    g.broken_url = f"http://127.0.0.1:{broken_port}"
    yield g
    client.close()
    r.close()
    serve.shutdown()
    import ray
    ray.shutdown()


def _gen(gw, body: dict, path: str = "/v1/generations", **kw) -> httpx.Response:
    return gw.http.post(path, json=body, **kw)


def _body(case, **over) -> dict:
    refs = [{"role": role, "image": _b64(data)} for role, data in _case_refs(case)]
    return {"prompt": case["prompt"], "references": refs, "seed": 7} | over


def _decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


# ---- the four real cases: sync, async, OpenAI shim ------------------------------------------------

@pytest.mark.parametrize("idx", range(4))
def test_sync_case(gw, idx):
    case = CASES[idx]
    path = "/generate" if idx % 2 else "/v1/generations"
    r = _gen(gw, _body(case, n=2, width=64, height=48), path)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["status"] == "succeeded" and len(data["images"]) == 2
    for i, im in enumerate(data["images"]):
        assert (im["width"], im["height"], im["seed"], im["index"]) == (64, 48, 7, i)
        assert _decode(im["b64_json"]).size == (64, 48)
    assert {"queue_s", "generate_s", "encode_s", "total_s"} <= set(data["timings"])
    assert data["timings"]["total_s"] >= data["timings"]["generate_s"] > 0


def test_same_seed_same_image(gw):
    a = _gen(gw, _body(CASES[0])).json()["images"][0]["b64_json"]
    b = _gen(gw, _body(CASES[0])).json()["images"][0]["b64_json"]
    c = _gen(gw, _body(CASES[0], seed=8)).json()["images"][0]["b64_json"]
    assert a == b and a != c


@pytest.mark.parametrize("idx", range(4))
def test_async_case(gw, idx):
    r = _gen(gw, _body(CASES[idx]), headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/v1/generations/{job['id']}"
    ttl = gw.r.ttl(gw.keys.job(job["id"]))
    assert 0 < ttl <= LIMITS["job_ttl_s"]
    def finished() -> bool:
        nonlocal job
        job = gw.http.get(f"/v1/generations/{job['id']}").json()
        return job["status"] not in ("queued", "running")
    assert wait_for(finished, 60, 0.05), job
    assert job["status"] == "succeeded", job
    assert len(job["images"]) == 1 and _decode(job["images"][0]["b64_json"]).size == (64, 64)


def test_unknown_job_is_404(gw):
    for job_id in ("0" * 32, "not-a-job"):
        r = gw.http.get(f"/v1/generations/{job_id}")
        assert r.status_code == 404 and r.json()["error"]["param"] == "id"


@pytest.mark.parametrize("idx", range(4))
def test_openai_edits_case(gw, idx):
    refs = _case_refs(CASES[idx])
    files = [("image[]", (f"{i}.png", data, "image/png")) for i, (_, data) in enumerate(refs)]
    r = gw.http.post("/v1/images/edits", files=files, data={"prompt": CASES[idx]["prompt"], "n": "2", "size": "32x64",
                                                           "response_format": "b64_json", "model": "dyref"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["data"]) == 2 and isinstance(data["created"], int)
    assert _decode(data["data"][0]["b64_json"]).size == (32, 64)


def test_form_variant(gw):
    refs = _case_refs(CASES[0])
    files = [("references", (f"{i}.png", data, "image/png")) for i, (_, data) in enumerate(refs)]
    r = gw.http.post("/v1/generations/form", files=files,
                     data={"prompt": CASES[0]["prompt"], "roles": [role for role, _ in refs], "seed": "3"})
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["seed"] == 3


# ---- weights: the newest verified version is served and reported ----------------------------------

def test_new_version_is_served_and_reported(gw):
    import torch

    from common.codec import state_from_bytes, state_to_bytes
    from common.transport import WeightStore
    store = WeightStore(gw.r, gw.keys, keep=3)
    before = _gen(gw, _body(CASES[1])).json()
    assert before["policy_version"] is None  # nothing published in this namespace yet
    sd = state_from_bytes(gw.policy.trainable_state())
    g = torch.Generator().manual_seed(0)
    perturbed = {k: (v + 0.5 * torch.randn(v.shape, generator=g) if "lora_B" in k else v) for k, v in sd.items()}
    store.publish(state_to_bytes(perturbed), version=1)
    after = _gen(gw, _body(CASES[1])).json()
    assert after["policy_version"] == 1
    assert after["images"][0]["b64_json"] != before["images"][0]["b64_json"]  # the weights really changed

    # a version whose bytes fail their checksum is refused; version 1 keeps being served
    wv = store.publish(state_to_bytes(sd), version=2)
    gw.r.set(wv.key, b"corrupted" + gw.r.get(wv.key)[9:])
    assert _gen(gw, _body(CASES[1])).json()["policy_version"] == 1
    ready = gw.http.get("/readyz").json()
    assert ready["policy_version"] == 1 and ready["weight_load_failures"].get("checksum") == 1
    metrics = gw.http.get("/metrics").text
    assert 'dyref_weight_load_failures_total{consumer="gateway-' in metrics and 'reason="checksum"' in metrics
    assert "dyref_gateway_requests_total" in metrics and "dyref_gateway_latency_seconds_bucket" in metrics

    store.publish(state_to_bytes(sd), version=3)
    again = _gen(gw, _body(CASES[1])).json()
    assert again["policy_version"] == 3
    assert again["images"][0]["b64_json"] == before["images"][0]["b64_json"]  # back to the original weights


# ---- bad input: status and the field named ---------------------------------------------------------

def _noise_png(side: int) -> bytes:
    return _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)))


def _bad_cases():
    ok = _b64(_png(Image.new("RGB", (32, 32), (200, 30, 30))))
    ref = {"role": "subject", "image": ok}
    return {
        "too_many_references": ({"prompt": "x", "references": [ref] * 7}, "references"),
        "unknown_role": ({"prompt": "x", "references": [ref, {"role": "hat", "image": ok}]}, "references[1].role"),
        "undecodable_image": ({"prompt": "x", "references": [ref, ref, {"role": "style", "image": _b64(b"GIF89a" + b"\0" * 40)}]},
                              "references[2].image"),
        "not_base64": ({"prompt": "x", "references": [{"role": "subject", "image": "%%%"}]}, "references[0].image"),
        "too_many_bytes": ({"prompt": "x", "references": [ref, {"role": "style", "image": _b64(_noise_png(320))}]},
                           "references[1].image"),
        "too_many_pixels": ({"prompt": "x", "references": [{"role": "background", "image": _b64(_png(Image.new("RGB", (400, 400))))}]},
                            "references[0].image"),
        "decompression_bomb": ({"prompt": "x", "references": [{"role": "subject", "image": _b64(_bomb_png())}]},
                               "references[0].image"),
        "size_not_multiple_of_16": ({"prompt": "x", "width": 40}, "width"),
        "size_too_large": ({"prompt": "x", "height": 256}, "height"),
        "n_too_large": ({"prompt": "x", "n": 3}, "n"),
        "n_zero": ({"prompt": "x", "n": 0}, "n"),
        "too_many_steps": ({"prompt": "x", "num_inference_steps": 11}, "num_inference_steps"),
        "missing_prompt": ({"references": []}, "prompt"),
        "blank_prompt": ({"prompt": "   "}, "prompt"),
        "url_fetch_disabled": ({"prompt": "x", "references": [{"role": "subject", "image": "http://127.0.0.1/a.png"}]},
                               "references[0].image"),
        "unknown_field": ({"prompt": "x", "colour": "red"}, "colour"),
        "bad_output_format": ({"prompt": "x", "output_format": "gif"}, "output_format"),
    }


@pytest.mark.parametrize("name", list(_bad_cases()))
def test_bad_input_names_the_field(gw, name):
    body, param = _bad_cases()[name]
    r = _gen(gw, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["message"] and err["code"]


def test_bad_input_codes(gw):
    codes = {name: _gen(gw, body).json()["error"]["code"] for name, (body, _) in _bad_cases().items()
             if name in ("too_many_references", "too_many_bytes", "too_many_pixels", "decompression_bomb", "n_too_large")}
    assert codes == {"too_many_references": "too_many_references", "too_many_bytes": "image_too_large",
                     "too_many_pixels": "image_too_many_pixels", "decompression_bomb": "image_too_many_pixels",
                     "n_too_large": "n_too_large"}


def test_bad_openai_and_form_inputs(gw):
    png = _png(Image.new("RGB", (32, 32)))
    r = gw.http.post("/v1/images/edits", files=[("image[]", ("a.png", png, "image/png"))], data={"prompt": "x", "size": "30x30"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "size"
    r = gw.http.post("/v1/images/edits", files=[("image[]", ("a.png", png, "image/png"))], data={"prompt": "x", "size": "big"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "size"
    r = gw.http.post("/v1/images/edits", files=[("image[]", ("a.png", b"nope", "image/png"))], data={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image[0]"
    r = gw.http.post("/v1/images/edits", files=[("image[]", ("a.png", png, "image/png"))], data={"n": "1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = gw.http.post("/v1/images/edits", files=[("image[]", ("a.png", png, "image/png"))],
                     data={"prompt": "x", "response_format": "url"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = gw.http.post("/v1/generations/form", files=[("references", ("a.png", png, "image/png"))],
                     data={"prompt": "x", "roles": "wig"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "roles[0]"
    r = gw.http.post("/v1/generations/form", files=[("references", ("a.png", png, "image/png"))], data={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "roles"
    r = gw.http.post("/v1/generations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


# ---- capacity and availability ------------------------------------------------------------------

def test_queue_full_is_429_with_retry_after(gw):
    body = {"prompt": "a slow one", "num_inference_steps": 10, "width": 128, "height": 128, "n": 2, "seed": 1}

    def post(_):
        with httpx.Client(base_url=gw.url, timeout=120) as c:
            return c.post("/v1/generations", json=body)
    with ThreadPoolExecutor(10) as ex:
        rs = list(ex.map(post, range(10)))
    statuses = [r.status_code for r in rs]
    assert set(statuses) <= {200, 429}, [r.text for r in rs if r.status_code not in (200, 429)]
    assert 200 in statuses and 429 in statuses, statuses
    busy = next(r for r in rs if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "queue_full"
    assert gw.http.get("/healthz").status_code == 200


def test_no_model_is_503(gw):
    r = httpx.post(gw.broken_url + "/v1/generations", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == "model_not_ready" and "PolicyLoadError" in err["message"]
    r = httpx.get(gw.broken_url + "/readyz", timeout=30)
    assert r.status_code == 503 and "model:" in r.json()["error"]["message"]
    assert httpx.post(gw.broken_url + "/v1/generations", json={"prompt": "x"}, headers={"Prefer": "respond-async"},
                      timeout=30).status_code == 503


def test_replicas_serve_http_themselves_and_share_the_port(gw, redis_server):
    """Serve runs no HTTP proxy (common/serving.py); two replicas of one gateway listen on the same
    port of this node (SO_REUSEPORT) and each answers requests on its own."""
    from ray import serve

    from common.config import GatewayConfig, PolicyConfig, RedisConfig
    from common.transport import free_port
    from services.gateway.deployments import gateway_app
    assert not serve.status().proxies
    port = free_port()
    rcfg = RedisConfig(url=redis_server.url, namespace=gw.keys.namespace + "two")
    serve.run(gateway_app(GatewayConfig(**LIMITS, replicas=2), PolicyConfig(), rcfg, redis_server.url, port=port),
              name="two", route_prefix=None)
    try:
        seen = set()
        deadline = time.monotonic() + 120
        while len(seen) < 2 and time.monotonic() < deadline:
            with httpx.Client(timeout=30) as c:   # a new connection each time: the kernel picks a replica per connection
                r = c.get(f"http://127.0.0.1:{port}/readyz")
            if r.status_code == 200:
                seen.add(r.json()["replica"])
            else:
                time.sleep(0.2)
        assert len(seen) == 2, seen
        r = httpx.post(f"http://127.0.0.1:{port}/v1/generations", json={"prompt": "a red square", "width": 32,
                                                                         "height": 32, "num_inference_steps": 2}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        serve.delete("two")


def test_health_and_docs(gw):
    assert gw.http.get("/healthz").json() == {"status": "ok"}
    ready = gw.http.get("/readyz").json()
    assert ready["model"] is True and ready["redis"] is True
    spec = gw.http.get("/openapi.json").json()
    assert {"/generate", "/v1/generations", "/v1/generations/form", "/v1/generations/{job_id}", "/v1/images/edits"} <= set(spec["paths"])
    assert "422" not in json.dumps(spec["paths"])  # validation errors are 400 envelopes
    assert gw.http.get("/docs").status_code == 200
    page = gw.http.get("/")
    assert page.status_code == 200 and "Add reference" in page.text
    assert gw.http.get("/static/app.js").status_code == 200


def test_cli_generate(gw, tmp_path):
    from typer.testing import CliRunner

    from dyref.gateway_commands import gateway_app
    refs = [f"{r['role']}:{EXAMPLES / r['path']}" for r in CASES[2]["references"]]
    args = ["generate", "--prompt", CASES[2]["prompt"], "--url", gw.url, "-o", str(tmp_path / "out.png"), "--n", "2",
            "--seed", "5"]
    for ref in refs:
        args += ["--ref", ref]
    res = CliRunner().invoke(gateway_app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert [Path(p).name for p in out["files"]] == ["out-0.png", "out-1.png"]
    assert Image.open(tmp_path / "out-1.png").size == (64, 64)
    res = CliRunner().invoke(gateway_app, ["generate", "--prompt", "x", "--url", gw.url, "--width", "40"])
    assert res.exit_code == 1 and "width" in res.output


# ---- property-based fuzz of the OpenAPI schema ---------------------------------------------------

def test_schemathesis_fuzz_finds_no_5xx(gw):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    ran = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=12, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            resp = case.call(base_url=gw.url, timeout=60)
            ran.append((op.label, resp.status_code))
            case.validate_response(resp, checks=[not_a_server_error])
        fuzz()
    assert len(ran) >= 40, ran
    print("fuzz: requests by (operation, status):", {k: sum(1 for x in ran if x == k) for k in sorted(set(ran))})
    assert not [x for x in ran if x[1] >= 500], ran
    assert gw.http.get("/healthz").status_code == 200  # the service stayed up
    assert _gen(gw, _body(CASES[0])).status_code == 200


# ---- the web page in headless Chromium -------------------------------------------------------------

def _chromium() -> tuple[str, str] | None:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_web_page_in_headless_chromium(gw, tmp_path):
    found = _chromium()
    if found is None:
        pytest.skip("no chromium + chromedriver binary (Debian: apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
    browser, driver_path = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
    artifacts = Path(os.environ.get("DYREF_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        wait = WebDriverWait(drv, 60)
        drv.get(gw.url + "/")
        case = CASES[0]
        drv.find_element(By.ID, "prompt").send_keys(case["prompt"])
        for i, ref in enumerate(case["references"][:3]):
            if i:
                drv.find_element(By.ID, "add-ref").click()
            row = drv.find_elements(By.CSS_SELECTOR, "#refs .ref")[i]
            row.find_element(By.CSS_SELECTOR, ".ref-file").send_keys(str(EXAMPLES / ref["path"]))
            Select(row.find_element(By.CSS_SELECTOR, ".ref-role")).select_by_visible_text(ref["role"])
        n = drv.find_element(By.ID, "n")
        n.clear()
        n.send_keys("2")
        drv.find_element(By.ID, "generate").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#images img.result")) == 2)
        version = drv.find_element(By.CSS_SELECTOR, 'td.v[data-k="policy version"]').text
        assert version  # "initial (none published)" or the published number
        assert drv.find_element(By.CSS_SELECTOR, 'td.v[data-k="generate_s"]').text.endswith(" s")
        shot = artifacts / "gateway_ui.png"
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        # an API error is shown as the API words it
        w = drv.find_element(By.ID, "width")
        w.clear()
        w.send_keys("40")
        drv.find_element(By.ID, "generate").click()
        box = wait.until(EC.visibility_of_element_located((By.ID, "error")))
        assert "width must be a multiple of 16, got 40" in box.text and "field: width" in box.text
        drv.save_screenshot(str(artifacts / "gateway_ui_error.png"))
        print(f"screenshots: {shot} and {artifacts / 'gateway_ui_error.png'}")
    finally:
        drv.quit()
