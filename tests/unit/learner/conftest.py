import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # 2 shared cores: oversubscription makes tiny models slower, not faster
    torch.set_num_threads(1)
    yield
