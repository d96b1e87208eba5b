import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # 2-core box shared by several agents: tiny models run single-threaded
    torch.set_num_threads(1)
