"""Adapters from a batch of ScoreRequests to each scorer's own batch call (one model pass per batch).

Every adapter returns, per request, a [G][J] table of raw scores: one row per generated image,
one column per comparison image (J = 1 for scorers that give one number per image), None where a
score is missing. They know nothing of training: DRS, normalisation and DAR happen in the learner.
"""
from __future__ import annotations

from typing import Callable

from PIL import Image

from common.config import RewardsConfig
from common.images import decode_image
from common.schemas import ScoreRequest

__all__ = ["build_group_scorer", "GroupScorer"]

Table = list[list[float | None]]
GroupScorer = Callable[[list[ScoreRequest]], list[Table]]


def _images(blobs, what: str) -> list[Image.Image]:
    return [decode_image(b, what=f"{what} {i + 1}") for i, b in enumerate(blobs)]


def _similarity(scorer) -> GroupScorer:
    def run(reqs: list[ScoreRequest]) -> list[Table]:
        gens, targets, sizes = [], [], []
        for q in reqs:
            against = _images(q.against, "comparison image")
            g = _images(q.images, "generated image")
            gens += g
            targets += [against] * len(g)
            sizes.append(len(g))
        rows = scorer.score(gens, targets)
        out, k = [], 0
        for n in sizes:
            out.append([list(r) for r in rows[k:k + n]])
            k += n
        return out
    return run


def _per_image(score: Callable[[list[Image.Image], list[Image.Image | None]], list[float | None]]) -> GroupScorer:
    """For scorers comparing each image with one reference (style, lighting): J = number of refs."""
    def run(reqs: list[ScoreRequest]) -> list[Table]:
        gens, refs, shape = [], [], []
        for q in reqs:
            g = _images(q.images, "generated image")
            against = _images(q.against, "comparison image") or [None]
            for ref in against:
                gens += g
                refs += [ref] * len(g)
            shape.append((len(g), len(against)))
        flat = score(gens, refs)
        out, k = [], 0
        for g, j in shape:
            cols = [flat[k + c * g: k + (c + 1) * g] for c in range(j)]
            out.append([[cols[c][i] for c in range(j)] for i in range(g)])
            k += g * j
        return out
    return run


def _per_reference(scorer) -> GroupScorer:
    from common.rewards.per_reference import ReferenceInput

    def run(reqs: list[ScoreRequest]) -> list[Table]:
        out = []
        for q in reqs:
            refs = [ReferenceInput(r.role, decode_image(r.image, what=f"reference {i + 1} ({r.role})"), r.box)
                    for i, r in enumerate(q.references)]
            g = _images(q.images, "generated image")
            if q.against:  # against: target -> the scene outside the subjects vs the ground truth
                out.append(scorer.scene(g, decode_image(q.against[0], what="target image"), refs))
            else:
                out.append(scorer.score(g, [refs] * len(g), roles=q.roles))
        return out
    return run


def _colour(scorer) -> GroupScorer:
    def run(reqs: list[ScoreRequest]) -> list[Table]:
        out = []
        for q in reqs:
            out.append([[v] for v in scorer.score(_images(q.images, "generated image"))])
        return out
    return run


def _judge(judge) -> GroupScorer:
    from common.rewards.judge import JudgeRequest

    def run(reqs: list[ScoreRequest]) -> list[Table]:
        jreqs, sizes = [], []
        for q in reqs:
            refs = [(r.role, decode_image(r.image, what=f"reference {i + 1} ({r.role})")) for i, r in enumerate(q.references)]
            g = _images(q.images, "generated image")
            jreqs += [JudgeRequest(prompt=q.prompt, generated=im, references=refs) for im in g]
            sizes.append(len(g))
        answers = judge.score(jreqs)
        flat = []
        for a in answers:
            vals = [v for v in a.values() if v is not None and v >= 0]  # -1 = not applicable, None = missing
            flat.append([sum(vals) / (10.0 * len(vals)) if vals else None])
        out, k = [], 0
        for n in sizes:
            out.append(flat[k:k + n])
            k += n
        return out
    return run


def build_group_scorer(kind: str, cfg: RewardsConfig) -> GroupScorer:
    """The scorer of `kind` (common.rewards.registry) behind a batch-of-requests adapter."""
    from common.rewards.registry import build_scorer
    adapters = {"similarity": _similarity, "colour": _colour, "judge": _judge, "references": _per_reference,
                "style": lambda s: _per_image(s.score), "lighting": lambda s: _per_image(s.score)}
    if kind not in adapters:
        raise ValueError(f"unknown scorer {kind!r}; expected one of {', '.join(adapters)}")
    return adapters[kind](build_scorer(kind, cfg))
