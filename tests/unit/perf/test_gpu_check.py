"""The GPU check's CPU tiny mode produces a well-formed report (issue 11: validated without a GPU)."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from common.perf import gpu_check
from common.perf.flops import card_slug, count_flops, peak_tflops


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gc") / "r.json"
    assert gpu_check.main(["--profile", "cpu-tiny", "--out", str(out), "--member-batch", "4"]) == 0
    return json.loads(out.read_text())


def _pos(d, *keys):
    for k in keys:
        assert isinstance(d[k], (int, float)) and d[k] > 0, f"{k} = {d.get(k)!r}"


def test_report_keys_and_card(report):
    assert set(gpu_check.REPORT_KEYS) <= set(report)
    assert report["card"] == "cpu" and report["device"] == "cpu" and report["profile"] == "cpu-tiny"
    assert report["shapes"] == {**report["shapes"], "steps": 10, "refs": 4, "group_size": 8}
    assert report["shapes"]["reference_tokens"] == 4 * report["shapes"]["image_tokens"]  # 4 refs of the output size
    assert report["options"]["member_batch"] == 4


def test_sampling_numbers(report):
    s = report["sampling"]
    _pos(s, "generate_s", "sample_group_s", "generate_images_per_s", "sample_group_images_per_s",
         "logprob_overhead", "peak_mem_gb")
    assert s["sample_group_images_per_s"] == pytest.approx(8 / s["sample_group_s"])


def test_train_numbers(report):
    t = report["train"]
    assert "error" not in t, t
    _pos(t, "train_step_s", "peak_mem_gb", "trainable_params")
    assert t["gradient_checkpointing"] is True and t["lora_rank"] == 8 and len(t["step_s"]) == 2
    assert t["loss"] == t["loss"]  # finite, not NaN


def test_weight_sync_numbers(report):
    w = report["weight_sync"]
    assert "error" not in w, w
    _pos(w, "nbytes", "serialize_s", "publish_s", "fetch_s", "load_s", "publish_to_load_s")
    assert w["version"] == 1


def test_mfu_numbers(report):
    m = report["mfu"]
    _pos(m, "transformer_forward_flops", "flops_per_image", "peak_tflops", "flop_bound_images_per_s",
         "mfu_generate", "mfu_sample_group")
    assert m["mfu_sample_group"] == pytest.approx(report["sampling"]["sample_group_images_per_s"]
                                                  / m["flop_bound_images_per_s"])


def test_peak_table_and_slug():
    assert peak_tflops("NVIDIA H100 80GB HBM3", 1.0)[0] == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe", 1.0)[0] == pytest.approx(756.0)
    assert peak_tflops("cpu", 0.2) == (0.2, "measured matmul (no datasheet entry for this device)")
    assert card_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_count_flops_matches_matmul_formula():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    flops, out = count_flops(lambda: a @ b)
    assert flops == 2 * 8 * 16 * 4 and out.shape == (8, 4)


def test_weight_sync_over_the_redis_bulk_limit_is_reported_then_measured():
    """A rank-64 LoRA of the real models (Qwen 1.6 GiB, Klein-9B 0.5 GiB fp32) exceeds Redis's 512 MiB
    value limit; the check names that and measures with the limit raised (here: 1 MiB vs a ~9 MB LoRA)."""
    torch.set_num_threads(1)
    from common.config import load_config
    from common.policy import build_policy
    base = load_config("cpu-tiny").policy
    pol = build_policy(base.model_copy(update={"lora": base.lora.model_copy(update={"rank": 2048, "alpha": 2048.0})}))
    out = gpu_check._weight_sync(pol, torch.device("cpu"), bulk_limit=2 ** 20)
    assert out["nbytes"] > 2 ** 20 and "exceeds Redis proto-max-bulk-len 1048576" in out["error_default_config"]
    assert out["raised_proto_max_bulk_len"] > out["nbytes"] and out["publish_to_load_s"] > 0
