"""FLOP accounting for the GPU check: counted FLOPs, the card's bf16 dense peak, and the MFU ratio.

FLOP bound on throughput:  images/s_max = peak_FLOP/s / FLOPs_per_image,
FLOPs_per_image = (N_steps * F_fwd(G) + F_encode + F_decode(G)) / G,
MFU = measured images/s / images/s_max  (= achieved FLOP/s / peak FLOP/s).
"""
from __future__ import annotations

import time

import torch

__all__ = ["PEAK_BF16_TFLOPS", "card_name", "card_slug", "peak_tflops", "count_flops", "measured_matmul_tflops"]

# dense (no 2:4 sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s.
# Matched in order against torch.cuda.get_device_name() (lower case), so the specific names come first.
PEAK_BF16_TFLOPS: list[tuple[str, float, str]] = [
    ("h100 pcie", 756.0, "NVIDIA H100 PCIe datasheet (1513 sparse / 2)"),
    ("h100 nvl", 835.0, "NVIDIA H100 NVL datasheet (1671 sparse / 2)"),
    ("h100", 989.4, "NVIDIA H100 SXM5 datasheet (1979 sparse / 2)"),
    ("h200", 989.4, "NVIDIA H200 SXM datasheet (same tensor cores as H100 SXM)"),
    ("gh200", 989.4, "NVIDIA GH200 datasheet"),
    ("b200", 2250.0, "NVIDIA B200 datasheet (4500 sparse / 2)"),
    ("a100", 312.0, "NVIDIA A100 datasheet"),
    ("l40s", 362.05, "NVIDIA L40S datasheet"),
    ("a10g", 125.0, "NVIDIA A10G (AWS) datasheet"),
    ("rtx 4090", 165.2, "NVIDIA Ada whitepaper, fp32 accumulate"),
]


def card_name() -> str:
    """The accelerator's name (torch.cuda.get_device_name) or "cpu"."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def card_slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-") or "cpu"


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, iters: int = 5) -> float:
    """Achieved TFLOP/s of an n^3 matmul (2 n^3 FLOPs each): the practical ceiling of this card/box."""
    n = n or (8192 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n ** 3 * iters / (time.perf_counter() - t) / 1e12


def peak_tflops(name: str, measured: float) -> tuple[float, str]:
    """(bf16 dense peak TFLOP/s, source). Unknown cards and the CPU use the measured matmul rate."""
    low = name.lower()
    for key, tf, src in PEAK_BF16_TFLOPS:
        if key in low:
            return tf, src
    return measured, "measured matmul (no datasheet entry for this device)"


def count_flops(fn) -> tuple[int, object]:
    """(FLOPs counted by torch.utils.flop_counter.FlopCounterMode while running fn(), fn's result).
    Counts matmuls, convolutions and SDPA; elementwise ops are not counted (a lower bound)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        out = fn()
    return int(fc.get_total_flops()), out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
