import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def rand_images():
    def make(n, size=(48, 40), seed=0):
        rng = np.random.default_rng(seed)
        return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
    return make
