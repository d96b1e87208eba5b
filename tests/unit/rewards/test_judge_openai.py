"""OpenAIJudge against a real HTTP server on 127.0.0.1 that plays a scripted remote model."""
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from common.rewards.judge import DIMENSIONS, JudgeError, JudgeRequest
from common.rewards.judge_openai import OpenAIJudge, RateLimiter

GOOD = {d: {"score": 7, "reasoning": "ok"} for d in DIMENSIONS} | {"overall_average_score": 7}


def chat(content):
    return 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}


class FakeModel:
    """Pops one scripted (status, body | delay) per request; records what the client sent."""

    def __init__(self):
        self.script, self.seen, self.lock = [], [], threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.seen.append((self.path, dict(self.headers), body))
                    status, payload = outer.script.pop(0) if outer.script else chat(json.dumps(GOOD))
                if status == "sleep":
                    time.sleep(payload)
                    status, payload = chat(json.dumps(GOOD))
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture
def fake():
    f = FakeModel()
    yield f
    f.server.shutdown()
    f.server.server_close()


def judge(fake, **kw):
    kw = {"rate_per_min": 60000, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "api_key": "k", **kw}
    return OpenAIJudge(fake.url, "judge-model", **kw)


def request(roles=("subject", "style")):
    refs = [(r, Image.new("RGB", (900, 300), (i * 40, 10, 10))) for i, r in enumerate(roles)]
    return JudgeRequest("a cat on a sofa", Image.new("RGB", (1024, 768), (0, 200, 0)), refs)


def test_valid_answer_and_wire_format(fake):
    j = judge(fake)
    (out,) = j.score([request(("subject", "style", "pose"))])
    assert out == {"text_adherence": 7.0, "subject_consistency": 7.0, "style_consistency": 7.0,
                   "lighting_consistency": -1.0, "background_consistency": -1.0, "aesthetic_quality": 7.0}
    path, headers, body = fake.seen[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k"
    assert body["model"] == "judge-model" and body["temperature"] == 0.9
    content = body["messages"][0]["content"]
    images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
    assert len(images) == 3                                              # subject, style, generated; pose not sent
    for url in images:
        assert url.startswith("data:image/jpeg;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert im.format == "JPEG" and max(im.size) <= 512
    texts = [c.get("text", "") for c in content]
    order = [i for i, t in enumerate(texts) if t.startswith(("Subject reference 1", "Style reference 1", "Generated image"))]
    assert len(order) == 3 and order == sorted(order)
    assert "Lighting reference: None" in "".join(texts)


def test_transient_errors_are_retried(fake):
    fake.script = [(429, {"error": "slow down"}), (503, {"error": "busy"}), chat(json.dumps(GOOD))]
    j = judge(fake)
    (out,) = j.score([request()])
    assert out["subject_consistency"] == 7.0 and len(fake.seen) == 3


def test_timeout_is_retried(fake):
    fake.script = [("sleep", 1.0)]
    j = judge(fake, timeout_s=0.3)
    (out,) = j.score([request()])
    assert out["text_adherence"] == 7.0 and len(fake.seen) == 2


def test_unparsable_answer_retried_then_missing_never_zero(fake):
    fake.script = [chat("I think it's an 8/10."), chat("{not json"), chat("```json\n{\"text_adherence\": \"9\"}\n```")]
    j = judge(fake, parse_retries=2)
    (out,) = j.score([request(())])
    assert len(fake.seen) == 3
    assert out["text_adherence"] is None and out["aesthetic_quality"] is None
    assert out["subject_consistency"] == -1.0
    assert 0.0 not in out.values() and j.stats["missing_fields"] == 2


def test_partial_answer_then_good_answer(fake):
    fake.script = [chat(json.dumps({"text_adherence": {"score": 5}})), chat(json.dumps(GOOD))]
    (out,) = judge(fake).score([request(())])
    assert out["text_adherence"] == 7.0 and len(fake.seen) == 2


def test_persistent_server_error_is_missing(fake):
    fake.script = [(500, {"e": 1})] * 10
    j = judge(fake, retries=2, parse_retries=0)
    (out,) = j.score([request(())])
    assert out["text_adherence"] is None and len(fake.seen) == 3 and j.stats["failed_calls"] == 1


def test_auth_error_raises(fake):
    fake.script = [(401, {"error": "bad key"})]
    with pytest.raises(JudgeError, match="401"):
        judge(fake).score([request()])


def test_rate_limiter_spaces_requests(fake):
    j = judge(fake, rate_per_min=600, concurrency=3)                      # 0.1 s apart
    t0 = time.monotonic()
    outs = j.score([request(()) for _ in range(4)])
    assert time.monotonic() - t0 >= 0.3 - 1e-3
    assert all(o["text_adherence"] == 7.0 for o in outs) and len(fake.seen) == 4
    rl = RateLimiter(1200)
    t0 = time.monotonic()
    for _ in range(3):
        rl.acquire()
    assert time.monotonic() - t0 >= 0.1 - 1e-3
    with pytest.raises(ValueError):
        RateLimiter(0)
