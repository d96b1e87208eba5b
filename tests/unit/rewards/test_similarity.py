"""SimilarityScorer: raw per-target cosines, one batched embedding pass."""
import pytest
import torch

from common.rewards.embedding import EmbeddingModel
from common.rewards.similarity import SimilarityScorer


class CountingModel(EmbeddingModel):
    """The real tiny embedder, counting how many embed calls a score makes."""
    calls = 0

    def embed(self, images):
        type(self).calls += 1
        return super().embed(images)


def test_per_target_cosines(rand_images):
    m = EmbeddingModel.tiny("siglip", "flat")
    s = SimilarityScorer(m)
    gen = rand_images(2, seed=1)
    refs = rand_images(3, seed=2)
    out = s.score(gen, [[gen[0], refs[0], refs[1]], [refs[2]]])
    assert [len(o) for o in out] == [3, 1]
    assert out[0][0] == pytest.approx(1.0, abs=1e-5)               # an image against itself
    e = m.embed(gen + refs)
    assert out[0][1] == pytest.approx(float(e[0] @ e[2]), abs=1e-5)
    assert out[1][0] == pytest.approx(float(e[1] @ e[4]), abs=1e-5)
    assert all(-1.0 <= v <= 1.0 for o in out for v in o)


def test_one_embedding_pass_and_empty_targets(rand_images):
    tiny = EmbeddingModel.tiny("clip", "pooler")
    m = CountingModel(tiny.model, tiny.processor, "clip", "pooler", batch_size=64)
    s = SimilarityScorer(m)
    out = s.score(rand_images(3), [rand_images(2, seed=5), [], rand_images(1, seed=6)])
    assert CountingModel.calls == 1
    assert [len(o) for o in out] == [2, 0, 1]
    assert s.score([], []) == []


def test_shared_target_embedded_once(rand_images):
    tiny = EmbeddingModel.tiny("siglip", "flat")
    seen = []

    class Spy(EmbeddingModel):
        def embed(self, images):
            seen.append(len(images))
            return super().embed(images)

    s = SimilarityScorer(Spy(tiny.model, tiny.processor, "siglip", "flat"))
    gen = rand_images(4, seed=1)
    target = rand_images(1, seed=2)[0]
    out = s.score(gen, [[target]] * 4)
    assert seen == [5]                                                   # 4 generated + the shared target once
    want = SimilarityScorer(tiny).score(gen, [[target.copy()] for _ in range(4)])
    assert out == [[pytest.approx(w[0], abs=1e-6)] for w in want]


def test_similar_images_score_higher(rand_images):
    # a slightly noised copy is closer than an unrelated image, even for a random tower
    import numpy as np
    from PIL import Image
    s = SimilarityScorer(EmbeddingModel.tiny("dinov2", "flat"))
    base = rand_images(1, size=(64, 64), seed=3)[0]
    arr = np.asarray(base).astype(int) + np.random.default_rng(0).integers(-10, 11, (64, 64, 3))
    near = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    far = rand_images(1, size=(64, 64), seed=4)[0]
    (near_s, far_s), = s.score([base], [[near, far]])
    assert near_s > far_s


def test_bad_input(rand_images):
    s = SimilarityScorer(EmbeddingModel.tiny())
    with pytest.raises(ValueError, match="target lists"):
        s.score(rand_images(2), [[]])
    with pytest.raises(TypeError, match=r"targets\[0\]"):
        s.score(rand_images(1), [rand_images(1)[0]])
    assert torch.get_num_threads() == 1
