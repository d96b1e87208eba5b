"""Per-reference consistency: one raw similarity s_j per reference j of a task, by role.

    subject j     s_j = own_j − excl_j
                  own_j  = how fully j's look fills the box where j belongs
                  excl_j = clip((max over the other subjects' boxes and the area outside every box of
                           j's presence there − d) / (1 − d), 0, 1)          (d = 0.2: a little halo
                           around a subject is not a copy of it)
    background    similarity of the image outside every subject box with the background reference
    style         the style scorer on the whole image (cosine of style embeddings)
    lighting      the lighting scorer on the whole image (the benchmark's lighting statistics)
    pose          not scored (None): no pose estimator in this project yet
    scene         (``against: target``, one column) the image outside every subject box against the
                  ground-truth target outside the same boxes, pixel by pixel: 1 − max(0, MAE − 0.01)/0.1.
                  A term on every case that keeps what no reference describes (the backdrop of a case
                  without a background reference) from drifting while the subjects are rewarded; per
                  pixel, because RL's first damage is speckle, which coarse cells average away
                  (docs/learning.md)

Exclusivity is what makes the reward honest (docs/learning.md): a score that only looks inside a
subject's own box is maximised by flooding the whole image with every subject's colours; with
excl_j a subject whose look also appears where it does not belong scores ≤ 0.

Where j belongs comes from ``box`` (fractions of the image) on the reference: known for the
synthetic task (its metadata), otherwise found in each generated image by an image-guided detector
(common.rewards.detector, ``rewards.detector: owlvit``). A subject with no box and no detector
scores None (missing, never 0). Two backends compare looks:
- ``looks`` (CPU profile): colour looks (common.rewards.looks), weight-free and deterministic;
- ``embedding``: an embedding model (SigLIP / CLIP / DINOv2) on crops, s_j = cos(crop_j, ref_j)
  minus how much better ref j matches another subject's crop than that subject's own reference does.
The learner applies DRS to every s_j and DAR reads their mean (common.rl.signals).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from common.rewards.looks import (AREA_TOLERANCE, as_float, background_similarity, box_mask, match_map, presence,
                                  subject_look)
from common.roles import Role

__all__ = ["ReferenceInput", "PerReferenceScorer", "SCORED_ROLES", "EXCLUSIVITY_DEADZONE"]

SCORED_ROLES: tuple[Role, ...] = ("subject", "background", "style", "lighting")
EXCLUSIVITY_DEADZONE = 0.2
POSED_AREA_TOLERANCE = 0.35  # a posed subject counts as fully present at 35 % of its upright area (the synthetic poses keep 35-100 %)
SCENE_SCALE, SCENE_TOLERANCE = 0.1, 0.01   # the scene term: same size as the target, so a tight scale


@dataclass(frozen=True)
class ReferenceInput:
    """One reference of a task: role, image, and where its content belongs (x0, y0, x1, y1 in [0, 1])."""
    role: str
    image: Image.Image
    box: tuple[float, float, float, float] | None = None


class PerReferenceScorer:
    """``score(generated, references, roles)`` -> per generated image, one s_j per reference whose
    role is in ``roles`` (reference order), None where it cannot be scored."""

    def __init__(self, backend: str = "looks", embedder=None, style=None, lighting=None, size: int | None = None,
                 detector=None):
        if backend not in ("looks", "embedding"):
            raise ValueError(f"per-reference backend must be 'looks' or 'embedding', got {backend!r}")
        if backend == "embedding" and embedder is None:
            raise ValueError("the embedding backend needs an embedding model")
        self.backend, self.embedder, self.style, self.lighting, self.size = backend, embedder, style, lighting, size
        self.detector = detector   # common.rewards.detector.SubjectDetector: boxes for subjects that have none

    @classmethod
    def from_config(cls, cfg) -> "PerReferenceScorer":
        from common.rewards.lighting import LightingScorer
        from common.rewards.style import StyleScorer
        embedder = None
        if cfg.reference_backend == "embedding":
            from common.rewards.embedding import EmbeddingModel
            embedder = EmbeddingModel.from_config(cfg)
        from common.rewards.detector import SubjectDetector
        return cls(cfg.reference_backend, embedder=embedder, style=StyleScorer.from_config(cfg),
                   lighting=LightingScorer(), detector=SubjectDetector.from_config(cfg))

    # ---- one image ---------------------------------------------------------------------------
    def score(self, generated: Sequence[Image.Image], references: Sequence[Sequence[ReferenceInput]],
              roles: Sequence[str] | None = None) -> list[list[float | None]]:
        if len(generated) != len(references):
            raise ValueError(f"{len(generated)} generated images but {len(references)} reference lists")
        keep = set(SCORED_ROLES if roles is None else roles)
        out = []
        for img, refs in zip(generated, references):
            refs = self._located(img, refs)
            row = self._subjects(img, refs) if any(r.role == "subject" for r in refs) else {}
            for j, r in enumerate(refs):
                if r.role == "background" and "background" in keep:
                    row[j] = self._background(img, r, refs)
                elif r.role == "style" and "style" in keep and self.style is not None:
                    row[j] = self.style.score([img], [r.image])[0]
                elif r.role == "lighting" and "lighting" in keep and self.lighting is not None:
                    row[j] = self.lighting.score([img], [r.image])[0]
            out.append([row.get(j) for j, r in enumerate(refs) if r.role in keep])
        return out

    def _located(self, img: Image.Image, refs: Sequence[ReferenceInput]) -> Sequence[ReferenceInput]:
        """Subjects without a box get the detector's box in this image (real data); without a
        detector they keep none and score None."""
        missing = [j for j, r in enumerate(refs) if r.role == "subject" and r.box is None]
        if self.detector is None or not missing:
            return refs
        found = self.detector.locate(img, [refs[j].image for j in missing])
        out = list(refs)
        for j, (box, _) in zip(missing, found):
            out[j] = ReferenceInput(refs[j].role, refs[j].image, box)
        return out

    def scene(self, generated: Sequence[Image.Image], target: Image.Image,
              references: Sequence[ReferenceInput]) -> list[list[float | None]]:
        """Per generated image, [similarity of the area outside every subject box to the target's]."""
        boxes = [r.box for r in references if r.role == "subject" and r.box is not None]
        tgt = as_float(target)
        out = []
        for img in generated:
            gen = as_float(img)
            if tgt.shape != gen.shape:
                tgt = as_float(target, (gen.shape[1], gen.shape[0]))
            out.append([background_similarity(gen, tgt, boxes, cells=min(gen.shape[:2]), scale=SCENE_SCALE,
                                              tolerance=SCENE_TOLERANCE)])
        return out

    def _subjects(self, img: Image.Image, refs: Sequence[ReferenceInput]) -> dict[int, float | None]:
        subj = [j for j, r in enumerate(refs) if r.role == "subject"]
        placed = [j for j in subj if refs[j].box is not None]
        out: dict[int, float | None] = {j: None for j in subj}
        if not placed:
            return out
        if self.backend == "embedding":
            out.update(self._subjects_embedding(img, refs, placed))
            return out
        gen = as_float(img)
        h, w = gen.shape[:2]
        boxes = {j: box_mask(refs[j].box, h, w) for j in placed}
        posed = {r.box for r in refs if r.role == "pose" and r.box is not None}
        outside = ~np.logical_or.reduce(list(boxes.values()))
        for j in placed:
            look = subject_look(refs[j].image)
            if look is None:
                continue
            m = match_map(gen, look)
            # a pose redraws the subject's outline (turned, narrower): less of its upright area is expected
            own = presence(m, boxes[j], look, tolerance=POSED_AREA_TOLERANCE if refs[j].box in posed else AREA_TOLERANCE)
            elsewhere = [presence(m, boxes[k], look) for k in placed if k != j]
            elsewhere.append(presence(m, outside, look, expected_pixels=float(boxes[j].sum())))
            excl = min(1.0, max(0.0, (max(elsewhere) - EXCLUSIVITY_DEADZONE) / (1 - EXCLUSIVITY_DEADZONE)))
            out[j] = own - excl
        return out

    def _subjects_embedding(self, img, refs, placed) -> dict[int, float]:
        w, h = img.size
        crops = [img.crop(_pixels(refs[j].box, w, h)) for j in placed]
        e_crop = self.embedder.embed(crops)                                  # [P, D] unit rows
        e_ref = self.embedder.embed([refs[j].image for j in placed])         # [P, D]
        sim = (e_crop @ e_ref.T).double().numpy()                           # sim[a, b] = cos(crop a, ref b)
        out = {}
        for a, j in enumerate(placed):
            # how much better ref j matches another subject's crop than that subject's own ref does
            steal = max([sim[b, a] - sim[b, b] for b in range(len(placed)) if b != a], default=0.0)
            out[j] = float(sim[a, a] - max(0.0, steal))
        return out

    def _background(self, img: Image.Image, ref: ReferenceInput, refs: Sequence[ReferenceInput]) -> float | None:
        boxes = [r.box for r in refs if r.role == "subject" and r.box is not None]
        if self.backend == "embedding":
            masked_gen, masked_ref = _blank_boxes(img, boxes), _blank_boxes(ref.image.resize(img.size), boxes)
            e = self.embedder.embed([masked_gen, masked_ref])
            return float(e[0] @ e[1])
        return background_similarity(as_float(img), as_float(ref.image), boxes)


def _pixels(box, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (int(round(x0 * w)), int(round(y0 * h)), max(int(round(x1 * w)), int(round(x0 * w)) + 1),
            max(int(round(y1 * h)), int(round(y0 * h)) + 1))


def _blank_boxes(img: Image.Image, boxes) -> Image.Image:
    """The image with every subject box painted black (the benchmark masks the foreground out)."""
    out = img.convert("RGB").copy()
    for b in boxes:
        out.paste((0, 0, 0), _pixels(b, *out.size))
    return out
