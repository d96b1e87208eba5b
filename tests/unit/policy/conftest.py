import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from PIL import Image

from common.config import PolicyConfig
from common.schemas import SamplingParams

FAMILIES = ["flux2-klein", "qwen-image-edit-plus"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # 2 shared cores: oversubscription makes tiny models slower, not faster
    torch.set_num_threads(1)
    yield


def make_cfg(family="flux2-klein", **kw) -> PolicyConfig:
    base = dict(family=family, height=64, width=64, num_inference_steps=4, eval_inference_steps=3)
    base.update(kw)
    return PolicyConfig(**base)


def make_params(**kw) -> SamplingParams:
    base = dict(num_inference_steps=4, height=64, width=64, train_steps=(0, 1, 2), num_train_steps=1)
    base.update(kw)
    return SamplingParams(**base)


def rand_image(w, h, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.NEAREST)


@pytest.fixture
def refs2():
    return [("subject", rand_image(80, 48, 1)), ("style", rand_image(40, 64, 2))]
