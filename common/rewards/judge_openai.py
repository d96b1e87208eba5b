"""OpenAI-compatible judge client: POST {base_url}/v1/chat/completions via httpx.

Images go as base64 JPEG (quality 80, long side <= 512, docs/benchmark.md §4). Transient failures
(429, 5xx, timeouts, connection errors) are retried with exponential backoff (tenacity); a
request that still fails is recorded as missing for that sample. Other 4xx (bad key, bad request)
raise JudgeError: retrying cannot fix configuration. Requests are spaced by a rate limiter
(the paper: 20 requests/min).
"""
from __future__ import annotations

import base64
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx
from PIL import Image
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from common.rewards.judge import DIMENSIONS, JudgeBase, JudgeError, JudgeRequest, Part

__all__ = ["OpenAIJudge", "RateLimiter", "encode_jpeg"]

log = logging.getLogger(__name__)


class RateLimiter:
    """At most `rate_per_min` acquisitions per minute, evenly spaced (thread-safe)."""

    def __init__(self, rate_per_min: float):
        if rate_per_min <= 0:
            raise ValueError(f"rate_per_min must be > 0, got {rate_per_min}")
        self.interval = 60.0 / rate_per_min
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def encode_jpeg(img: Image.Image, max_side: int = 512, quality: int = 80) -> str:
    """PIL -> data URL of a JPEG whose long side is <= max_side."""
    img = img.convert("RGB")
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Transient(Exception):
    """A response worth retrying (429 / 5xx)."""


def _is_transient(e: BaseException) -> bool:
    return isinstance(e, (_Transient, httpx.TimeoutException, httpx.TransportError))


class OpenAIJudge(JudgeBase):
    """Judge over an OpenAI-compatible chat-completions endpoint.

    Args:
        base_url: e.g. "http://host:8000" or "https://api.example.com/v1".
        model: model name sent in the request.
        api_key: bearer token (None: no Authorization header).
        rate_per_min: request spacing (every HTTP attempt counts).
        retries: extra attempts after a transient failure; parse_retries: extra asks after an
            unparsable answer.
        concurrency: requests in flight at once across a batch.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 dimensions: Sequence[str] = DIMENSIONS, rate_per_min: float = 20.0, retries: int = 3,
                 parse_retries: int = 2, timeout_s: float = 60.0, temperature: float = 0.9, max_tokens: int = 4096,
                 max_side: int = 512, jpeg_quality: int = 80, concurrency: int = 4,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 30.0):
        super().__init__(dimensions, parse_retries)
        if not base_url:
            raise ValueError("OpenAIJudge needs a base_url (rewards.judge_url)")
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.max_side, self.jpeg_quality, self.concurrency = max_side, jpeg_quality, max(1, concurrency)
        self.retries, self.backoff = retries, (backoff_base_s, backoff_max_s)
        self.limiter = RateLimiter(rate_per_min)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.stats["failed_calls"] = 0

    def close(self) -> None:
        self.client.close()

    def _messages(self, parts: list[Part]) -> list[dict]:
        content = []
        for p in parts:
            if isinstance(p, str):
                content.append({"type": "text", "text": p})
            else:
                content.append({"type": "image_url", "image_url": {"url": encode_jpeg(p, self.max_side, self.jpeg_quality)}})
        return [{"role": "user", "content": content}]

    def _post(self, body: dict) -> dict:
        self.limiter.acquire()
        r = self.client.post(self.url, json=body)
        if r.status_code == 429 or r.status_code >= 500:
            raise _Transient(f"HTTP {r.status_code}")
        if r.status_code >= 400:
            raise JudgeError(f"judge endpoint {self.url} answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            return r.json()
        except ValueError:
            raise _Transient("response body is not JSON") from None

    def complete(self, parts: list[Part]) -> str | None:
        body = {"model": self.model, "messages": self._messages(parts), "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        retrying = Retrying(retry=retry_if_exception(_is_transient), stop=stop_after_attempt(1 + self.retries),
                            wait=wait_exponential(multiplier=self.backoff[0], max=self.backoff[1]), reraise=False)
        try:
            data = retrying(self._post, body)
        except RetryError as e:
            self._count("failed_calls")
            log.warning("judge call failed after %d attempts: %s", 1 + self.retries, e.last_attempt.exception())
            return None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None
        if isinstance(content, list):        # some servers return content parts
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        return content if isinstance(content, str) else None

    def score(self, requests: Sequence[JudgeRequest]) -> list[dict[str, float | None]]:
        if self.concurrency == 1 or len(requests) <= 1:
            return super().score(requests)
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.score_one, requests))
