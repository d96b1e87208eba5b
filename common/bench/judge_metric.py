"""The OmniRef-Bench MLLM judge (docs/benchmark.md §4): six 0-10 dimensions, −1 = not applicable.

Message order follows the released rubric: text, subject references, style reference, lighting
reference, background reference, generated image (pose references are not sent; there is no pose
dimension). A reference type the case lacks is labelled "None" and its dimension must be −1.

Robustness, where the released script is lax:
- an answer that is not strict JSON with the six dimensions is retried (``retries`` times) and
  then recorded as *missing* (null) — never as 0, which would drag means down silently;
- a dimension that applies but comes back −1, out of [0, 10] or absent is missing too;
- a value for a dimension that does not apply is ignored (the dimension stays n/a).
The HTTP client rate-limits (requests per minute, evenly spaced) and backs off on 429/5xx.
"""
from __future__ import annotations

import base64
import io
import json
import re
from typing import Protocol

import httpx
from PIL import Image
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from common.bench.loader import BenchCase

from common.rewards.judge import SENT_ROLES  # the OmniRef judge's message order, shared
from common.rewards.judge_openai import RateLimiter  # noqa: E402  (re-exported for callers)

__all__ = ["JUDGE_DIMS", "applicable_dims", "build_judge_request", "parse_omniref_answer", "JudgeClient",
           "OpenAICompatibleJudgeClient", "RewardsJudgeClient", "RateLimiter", "JudgeScorer"]

JUDGE_DIMS = ("text_adherence", "subject_consistency", "style_consistency", "lighting_consistency",
              "background_consistency", "aesthetic_quality")
_DIM_ROLE = {"subject_consistency": "subject", "style_consistency": "style",
             "lighting_consistency": "lighting", "background_consistency": "background"}

RUBRIC = """You are a strict evaluator of multi-reference image generation. Score the GENERATED image
(the last image) on six dimensions from 0 to 10 with conservative anchors: 10 = flawless,
8 = excellent with negligible flaws, 6 = passable, below 5 = noticeable errors.
- text_adherence: follows the prompt; failing any reference caps the score below 6.
- subject_consistency: each subject matches its reference (ignore style, pose, lighting);
  2 = generic class, 6 = recognizable, 10 = structural clone.
- style_consistency: medium, brushwork and palette of the style reference.
- lighting_consistency: direction, shadows and grade of the lighting reference; copying the
  reference's background = 2.
- background_consistency: layout of the background reference kept rigid even when stylized;
  a pasted-collage look = 2.
- aesthetic_quality: overall quality and artifacts.
A reference type marked "None" is absent: its dimension MUST be -1.
Answer with strict JSON only:
{"text_adherence": {"score": s, "reasoning": "..."}, "subject_consistency": {...},
 "style_consistency": {...}, "lighting_consistency": {...}, "background_consistency": {...},
 "aesthetic_quality": {...}, "overall_average_score": s}"""


def applicable_dims(case: BenchCase) -> list[str]:
    roles = set(case.roles())
    return [d for d in JUDGE_DIMS if d not in _DIM_ROLE or _DIM_ROLE[d] in roles]


def build_judge_request(case: BenchCase, refs: list[tuple[str, Image.Image, str]],
                        image: Image.Image) -> tuple[str, list[Image.Image]]:
    """(text, images in rubric order). Images: subjects, style, lighting, background, generated."""
    images, lines = [], [RUBRIC, "", f"Prompt: {case.prompt}"]
    for role in SENT_ROLES:
        mine = [(img, name) for r, img, name in refs if r == role]
        if not mine:
            lines.append(f"{role} reference: None")
            continue
        for img, name in mine:
            images.append(img)
            lines.append(f"{role} reference (image {len(images)}): {name}")
    images.append(image)
    lines.append(f"Generated image: image {len(images)}")
    return "\n".join(lines), images


def _as_score(v) -> float | None:
    if isinstance(v, dict):
        v = v.get("score")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def parse_omniref_answer(text: str) -> dict[str, float | None] | None:
    """Strict parse of a judge answer -> {dim: score or −1 or None}; None when it is not JSON.

    Accepts the JSON object alone or inside one ```json fence; anything else (prose, truncated
    JSON, a non-object) is not an answer. Dimensions with a non-numeric score map to None.
    """
    if not isinstance(text, str):
        return None
    s = text.strip()
    m = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", s, flags=re.S)
    if m:
        s = m.group(1)
    try:
        obj = json.loads(s)
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or not any(d in obj for d in JUDGE_DIMS):
        return None
    return {d: _as_score(obj.get(d)) for d in JUDGE_DIMS}


class JudgeClient(Protocol):
    def ask(self, text: str, images: list[Image.Image]) -> str: ...

    def describe(self) -> dict: ...


def _transient(e: BaseException) -> bool:
    if isinstance(e, httpx.HTTPStatusError):
        return e.response.status_code in (408, 429) or e.response.status_code >= 500
    return isinstance(e, httpx.TransportError)


def _jpeg_data_url(img: Image.Image, long_side: int = 512) -> str:
    # the released judge sends JPEG q80 with the long side at most 512
    img = img.convert("RGB")
    if max(img.size) > long_side:
        img.thumbnail((long_side, long_side), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class OpenAICompatibleJudgeClient:
    """POST {base_url}/chat/completions with text + image_url parts; returns the message content."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, rate_per_min: float = 20.0,
                 http_retries: int = 3, temperature: float = 0.9, max_tokens: int = 4096, timeout_s: float = 120.0):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.temperature, self.max_tokens = temperature, max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.limiter = RateLimiter(rate_per_min)  # the one limiter of common.rewards
        self._post = retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(http_retries + 1),
                           wait=wait_exponential(multiplier=1.0, max=30), reraise=True)(self._post_once)

    def describe(self) -> dict:
        return {"kind": "openai", "url": self.base_url, "model": self.model}

    def _post_once(self, body: dict) -> dict:
        self.limiter.acquire()
        r = self.client.post(f"{self.base_url}/chat/completions", json=body)
        r.raise_for_status()
        return r.json()

    def ask(self, text: str, images: list[Image.Image]) -> str:
        content = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": _jpeg_data_url(im)}} for im in images]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        data = self._post(body)
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return ""                                  # malformed envelope: treated like a bad answer

    def close(self) -> None:
        self.client.close()


class RewardsJudgeClient:
    """Any common.rewards judge backend (``complete(parts: list[str | PIL]) -> str | None``), e.g.
    LocalVLMJudge, asked the bench rubric: text first, then the images in rubric order."""

    def __init__(self, judge):
        self.judge = judge

    def describe(self) -> dict:
        return {"kind": "rewards", "class": type(self.judge).__name__}

    def ask(self, text: str, images: list[Image.Image]) -> str:
        return self.judge.complete([text, *images]) or ""


class JudgeScorer:
    """Bench scorer over any JudgeClient. Dims: ``judge.<dimension>`` for the applicable ones."""

    name = "judge"
    dims = tuple(f"judge.{d}" for d in JUDGE_DIMS)

    def __init__(self, client: JudgeClient, retries: int = 3):
        self.client, self.retries = client, retries
        self.notes: list[str] = []
        self.calls = 0

    def applies(self, case: BenchCase) -> bool:
        return True

    def score(self, case, image, refs):
        want = applicable_dims(case)
        text, images = build_judge_request(case, refs, image)
        parsed = None
        for _ in range(self.retries + 1):       # an unparseable answer is asked again
            self.calls += 1
            try:
                parsed = parse_omniref_answer(self.client.ask(text, images))
            except (httpx.HTTPError, RuntimeError):
                parsed = None
            if parsed is not None:
                break
        out: dict[str, float | None] = {}
        for d in want:
            v = parsed.get(d) if parsed else None
            out[f"judge.{d}"] = v if v is not None and 0.0 <= v <= 10.0 else None
        return out
