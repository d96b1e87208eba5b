"""Embedders: tiny towers for every backend and pooling, pretrained loading from local folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from common.config import RewardsConfig
from common.rewards.embedding import EmbeddingModel, tiny_vision_tower


@pytest.mark.parametrize("backend", ["siglip", "clip", "dinov2"])
@pytest.mark.parametrize("pooling", ["mean", "pooler", "flat"])
def test_tiny_embeddings_shape_and_norm(backend, pooling, rand_images):
    m = EmbeddingModel.tiny(backend, pooling, batch_size=2)
    imgs = rand_images(3)
    e = m.embed(imgs)
    hidden = 32
    tokens = {"siglip": 16, "clip": 17, "dinov2": 17}[backend]
    dim = {"mean": hidden, "pooler": hidden, "flat": tokens * hidden}[pooling]
    assert e.shape == (3, dim) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    # batching (3 images in chunks of 2) does not change the result
    single = torch.cat([m.embed([im]) for im in imgs])
    assert torch.allclose(e, single, atol=1e-5)


def test_flat_pooling_is_the_flattened_token_grid(rand_images):
    m = EmbeddingModel.tiny("siglip", "flat")
    imgs = rand_images(2)
    with torch.no_grad():
        hidden = m.model(**m.processor(images=imgs, return_tensors="pt")).last_hidden_state
    want = torch.nn.functional.normalize(hidden.flatten(1), dim=-1)
    assert torch.allclose(m.embed(imgs), want, atol=1e-6)
    m = EmbeddingModel.tiny("siglip", "mean")
    assert torch.allclose(m.embed(imgs), torch.nn.functional.normalize(hidden.mean(1), dim=-1), atol=1e-6)


def test_tiny_is_seeded_and_leaves_global_rng_alone(rand_images):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = EmbeddingModel.tiny("clip", "pooler", seed=7).embed(rand_images(1))
    after = torch.rand(1)
    b = EmbeddingModel.tiny("clip", "pooler", seed=7).embed(rand_images(1))
    c = EmbeddingModel.tiny("clip", "pooler", seed=8).embed(rand_images(1))
    assert torch.equal(before, after) and torch.equal(a, b) and not torch.allclose(a, c)


def save_tower(tmp_path, model, proc, name):
    d = tmp_path / name
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


def test_pretrained_loads_local_folder_and_matches(tmp_path, rand_images):
    model, proc = tiny_vision_tower("dinov2", seed=3)
    d = save_tower(tmp_path, model, proc, "dino")
    m = EmbeddingModel.pretrained(d, "dinov2", "mean")
    ref = EmbeddingModel(model, proc, "dinov2", "mean")
    imgs = rand_images(2)
    assert torch.allclose(m.embed(imgs), ref.embed(imgs), atol=1e-6)
    cfg = RewardsConfig(source="pretrained", embedding_backend="dinov2", embedding_path=str(d), pooling="pooler")
    assert EmbeddingModel.from_config(cfg).embed(imgs).shape == (2, 32)
    with pytest.raises(ValueError, match="embedding_backend is 'clip'"):
        EmbeddingModel.pretrained(d, "clip")


def test_pretrained_siglip2_chosen_by_config(tmp_path):
    from transformers import Siglip2ImageProcessorPil, Siglip2VisionConfig, Siglip2VisionModel
    torch.manual_seed(0)
    model = Siglip2VisionModel(Siglip2VisionConfig(patch_size=8, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=2, num_patches=16))
    d = save_tower(tmp_path, model, Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16), "s2")
    m = EmbeddingModel.pretrained(d, "siglip", "flat")
    assert m.variant == "siglip2"
    # different aspect ratios still give aligned 16-token grids
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 90, 3), dtype=np.uint8))
    tall = wide.rotate(90, expand=True)
    e = m.embed([wide, tall, wide])
    assert e.shape == (3, 16 * 32) and torch.allclose(e[0], e[2])


def test_errors_are_clear(tmp_path, rand_images):
    with pytest.raises(FileNotFoundError, match="config.json"):
        EmbeddingModel.pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="embedding_path"):
        EmbeddingModel.from_config(RewardsConfig(source="pretrained"))
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingModel.tiny("siglip", "max")
    with pytest.raises(ValueError, match="backend"):
        EmbeddingModel.tiny("resnet")
    m = EmbeddingModel.tiny()
    with pytest.raises(TypeError, match="PIL"):
        m.embed([np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="no images"):
        m.embed([])
