"""VLM judge: OmniRef-Bench rubric (docs/benchmark.md §4), prompt layout and STRICT answer parsing.

Six 0–10 dimensions; −1 means "not applicable" (the reference type is absent). Conservative
anchors: 10 flawless, 8 excellent with negligible flaws, 6 passable, <5 noticeable errors.
Message order: rubric → text prompt → subject refs → style ref → lighting ref → background ref →
generated image. Pose references are not sent (there is no pose dimension).

Scores are returned raw per dimension: a float in [0, 10], −1.0 where not applicable, and None
where the judge gave no valid value. An unparsable answer is retried by the backend and then
recorded as missing (None) — never as 0 (the paper's reward falls back to {"score": 0}).

Backends (same `score(requests)` surface): LocalVLMJudge (transformers Qwen2.5-VL / Qwen3-VL,
common/rewards/judge_local.py) and OpenAIJudge (any OpenAI-compatible endpoint,
common/rewards/judge_openai.py), each in its own module (they import this one, never the other way);
common.rewards.registry builds the one a config names.
"""
from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

from PIL import Image

from common.roles import ROLES, Role

__all__ = [
    "DIMENSIONS", "ROLE_DIMENSION", "SENT_ROLES", "JudgeRequest", "JudgeError", "Part", "applicable_dimensions",
    "build_judge_parts", "dimension_rubric", "parse_judge_answer", "judge_mean", "JudgeBase",
]

DIMENSIONS = ("text_adherence", "subject_consistency", "style_consistency", "lighting_consistency",
              "background_consistency", "aesthetic_quality")
ROLE_DIMENSION = {"subject": "subject_consistency", "style": "style_consistency",
                  "lighting": "lighting_consistency", "background": "background_consistency"}
SENT_ROLES: tuple[Role, ...] = ("subject", "style", "lighting", "background")  # message order; pose is not sent

_ANCHORS = ("Conservative scoring: 10 = flawless; 8 = excellent with negligible flaws; 6 = passable; "
            "below 5 = noticeable errors. Use the full 0-10 range.")
# 0/2/4/6/8/10 descriptors per dimension (paraphrasing benchmark/MLLM_eval/vlm_utils.py)
_RUBRIC = {
    "text_adherence": ("How well the generated image follows the text prompt (objects, attributes, counts, "
                       "spatial relations, actions). Failing to use any provided reference caps the score below 6.",
                       ["ignores the prompt", "one prompt element present", "several elements missing or wrong",
                        "main content right, some details wrong", "all elements, a minor slip", "every element exact"]),
    "subject_consistency": ("Identity of each subject reference in the generated image. Ignore changes of style, "
                            "pose and lighting that the prompt asks for.",
                            ["subject absent", "only the generic class", "class right, identity features wrong",
                             "recognisable subject", "identity kept, small detail drift", "structural clone of the reference"]),
    "style_consistency": ("Match of the style reference: medium, brushwork/rendering, palette.",
                          ["unrelated style", "faint hint of the palette", "one of medium/brushwork/palette",
                           "two of three match", "all three, minor deviations", "indistinguishable style"]),
    "lighting_consistency": ("Match of the lighting reference: light direction, shadows, colour grade. "
                             "Copying the reference's background instead of its light scores 2.",
                             ["contradicting light", "reference background copied", "only the overall brightness",
                              "direction or grade right", "direction, shadows and grade, minor deviations", "identical lighting"]),
    "background_consistency": ("Background reference kept: layout must stay rigid even when stylised; "
                               "a pasted-collage look scores 2.",
                               ["different background", "pasted collage", "same kind of place, layout changed",
                                "layout kept, elements missing", "layout and elements kept, minor drift", "identical background"]),
    "aesthetic_quality": ("Visual quality: composition, coherence, artefacts, anatomy, sharpness.",
                          ["broken image", "severe artefacts", "obvious artefacts", "acceptable with flaws",
                           "high quality, negligible flaws", "flawless"]),
}


class JudgeError(RuntimeError):
    """A judge call that cannot succeed by retrying (bad configuration, authentication, bad request)."""


@dataclass(frozen=True)
class JudgeRequest:
    """One generated image with its prompt and typed references [(role, image), ...]."""
    prompt: str
    generated: Image.Image
    references: Sequence[tuple[str, Image.Image]] = field(default_factory=tuple)


Part = Union[str, Image.Image]       # a text chunk or an image, in message order


def applicable_dimensions(roles: Iterable[str]) -> set[str]:
    """Dimensions that apply given the reference roles present (text and aesthetics always do)."""
    return {"text_adherence", "aesthetic_quality"} | {ROLE_DIMENSION[r] for r in roles if r in ROLE_DIMENSION}


def dimension_rubric(dim: str) -> str:
    desc, levels = _RUBRIC[dim]
    return f"- {dim}: {desc} " + "; ".join(f"{2 * i} = {t}" for i, t in enumerate(levels)) + "."


def build_judge_parts(req: JudgeRequest, dimensions: Sequence[str], answer_format: str = "json") -> list[Part]:
    """Rubric text, then prompt, then references by role, then the generated image.

    answer_format "json": the full JSON answer (score + reasoning per dimension, overall_average_score);
    "score": a single dimension, answered as {"score": N} (the expected-score forward).
    """
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown judge dimensions {unknown}; expected a subset of {DIMENSIONS}")
    roles = [r for r, _ in req.references]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ValueError(f"unknown reference roles {bad}")
    parts: list[Part] = [
        "You are a strict evaluator of multi-reference image generation. " + _ANCHORS + "\nRubric:\n"
        + "\n".join(dimension_rubric(d) for d in dimensions)
        + "\nA reference type marked None is absent: its dimension must be -1.",
        f"\nText prompt: {req.prompt}\n",
    ]
    for role in SENT_ROLES:
        imgs = [im for r, im in req.references if r == role]
        if not imgs:
            parts.append(f"{role.capitalize()} reference: None\n")
        for i, im in enumerate(imgs, 1):
            parts += [f"{role.capitalize()} reference {i}:", im, "\n"]
    parts += ["Generated image:", req.generated, "\n"]
    if answer_format == "json":
        fields = ", ".join(f'"{d}": {{"score": <0-10 or -1>, "reasoning": "<why>"}}' for d in dimensions)
        parts.append(f'Answer with strict JSON only: {{{fields}, "overall_average_score": <mean>}}')
    else:
        parts.append(f'Answer with strict JSON only: {{"score": <0-10>}} for {dimensions[0]}.')
    return parts


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def _load_json_object(text: str) -> dict | None:
    text = text.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    for candidate in (text, text[text.find("{"): text.rfind("}") + 1] if "{" in text else ""):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        return obj if isinstance(obj, dict) else None
    return None


def _valid_number(v) -> float | None:
    if isinstance(v, dict):
        v = v.get("score")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None          # strings ("8"), null, NaN, booleans are not scores
    return float(v)


def parse_judge_answer(text: str | None, dimensions: Sequence[str],
                       not_applicable: Iterable[str] = ()) -> dict[str, float | None]:
    """Strict parse of a judge answer -> {dim: score in [0, 10] | -1.0 (not applicable) | None (missing)}.

    Accepted: a JSON object (optionally in a ```json fence, or the outermost {...} of the text) whose
    dimension fields are numbers or {"score": number}. A dimension in `not_applicable` is −1.0 whatever
    the answer says (the reference is absent); an applicable dimension answered −1, out of range, as a
    string, or missing is None. Never 0 by default.
    """
    na = set(not_applicable)
    obj = _load_json_object(text) if isinstance(text, str) else None
    out: dict[str, float | None] = {}
    for d in dimensions:
        if d in na:
            out[d] = -1.0
            continue
        v = _valid_number(obj.get(d)) if obj is not None else None
        out[d] = v if v is not None and 0.0 <= v <= 10.0 else None
    return out


def judge_mean(scores: dict[str, float | None]) -> float | None:
    """Mean of the valid applicable scores (−1 and None excluded), or None if there are none."""
    vals = [v for v in scores.values() if v is not None and v >= 0]
    return sum(vals) / len(vals) if vals else None


def _n_valid(scores: dict[str, float | None]) -> int:
    return sum(v is not None for v in scores.values())


class JudgeBase:
    """score(requests) -> one {dimension: raw score | -1.0 | None} dict per request.

    Subclasses implement `complete(parts) -> str | None` (None: the call failed after its retries).
    An answer missing any applicable dimension is asked again up to `parse_retries` times; the best
    attempt (most valid fields) is kept and the rest is recorded as missing.
    """

    def __init__(self, dimensions: Sequence[str] = DIMENSIONS, parse_retries: int = 2):
        unknown = [d for d in dimensions if d not in DIMENSIONS]
        if unknown or not dimensions:
            raise ValueError(f"judge dimensions must be a non-empty subset of {DIMENSIONS}, got {list(dimensions)}")
        self.dimensions, self.parse_retries = tuple(dimensions), parse_retries
        self.stats = {"requests": 0, "unparsable_answers": 0, "missing_fields": 0}
        self._stats_lock = threading.Lock()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:                    # backends may score requests from several threads
            self.stats[key] = self.stats.get(key, 0) + n

    def complete(self, parts: list[Part]) -> str | None:
        raise NotImplementedError

    def score_one(self, req: JudgeRequest) -> dict[str, float | None]:
        na = set(self.dimensions) - applicable_dimensions(r for r, _ in req.references)
        asked = [d for d in self.dimensions if d not in na]
        best = parse_judge_answer(None, self.dimensions, na)
        if not asked:
            return best
        parts = build_judge_parts(req, self.dimensions)
        for _ in range(1 + self.parse_retries):
            self._count("requests")
            got = parse_judge_answer(self.complete(parts), self.dimensions, na)
            if _n_valid(got) > _n_valid(best):
                best = got
            if all(got[d] is not None for d in asked):
                break
            self._count("unparsable_answers")
        self._count("missing_fields", sum(best[d] is None for d in asked))
        return best

    def score(self, requests: Sequence[JudgeRequest]) -> list[dict[str, float | None]]:
        return [self.score_one(r) for r in requests]
