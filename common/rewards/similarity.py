"""Per-target embedding cosine similarities: the raw s_j of the paper's image_similarity reward.

    s_j = cos(f(gen), f(T_j))          (docs/algorithm.md §8)

The scorer returns the raw s_j only. Reducing over j, the DRS sigmoid k(n)·(s_j − τ) and the
`sim_raw` DAR reads are the learner's business (common/rl). T is the ground-truth target when the
record has one, or each reference of one role; the caller passes the right images.
"""
from __future__ import annotations

import torch
from PIL import Image

from common.rewards.embedding import EmbeddingModel

__all__ = ["SimilarityScorer"]


class SimilarityScorer:
    """score(generated, targets) -> per-target cosine similarities, one list per generated image."""

    def __init__(self, model: EmbeddingModel):
        self.model = model

    def score(self, generated: list[Image.Image], targets: list[list[Image.Image]]) -> list[list[float]]:
        """generated: N images; targets: N lists (T_i may be empty) -> N lists of len(T_i) floats in [-1, 1].

        All N + sum_i |T_i| images are embedded together (one forward per `batch_size` chunk); an image
        object passed several times (a group's shared target) is embedded once.
        """
        if len(generated) != len(targets):
            raise ValueError(f"SimilarityScorer.score: {len(generated)} generated images but {len(targets)} target lists")
        for i, t in enumerate(targets):
            if not isinstance(t, (list, tuple)):
                raise TypeError(f"targets[{i}] must be a list of PIL images, got {type(t).__name__}")
        if not generated:
            return []
        flat = list(generated) + [im for t in targets for im in t]
        # the same reference object is usually shared by a whole group: embed each object once
        slot: dict[int, int] = {}
        unique: list[Image.Image] = []
        for im in flat:
            if id(im) not in slot:
                slot[id(im)] = len(unique)
                unique.append(im)
        emb = self.model.embed(unique)                                     # [U, D], unit rows
        emb = emb[torch.tensor([slot[id(im)] for im in flat])]             # [N + M, D]
        gen, refs = emb[:len(generated)], emb[len(generated):]
        out, k = [], 0
        for i, t in enumerate(targets):
            sims = refs[k:k + len(t)] @ gen[i] if t else torch.empty(0)   # cosine: rows are unit vectors
            out.append([float(s) for s in sims.clamp(-1.0, 1.0)])
            k += len(t)
        return out
