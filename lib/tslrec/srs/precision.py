"""The precision of the recommenders' item scoring in training (srs.precision).

The full-softmax scores (positions x items x hidden) are most of a training step's work; in bfloat16 their matmuls
run 2-4x faster on CPUs with native bf16 dot products (AVX512-BF16, AMX) and on CUDA. Elsewhere bfloat16 is
emulated and slower than float32, so `auto` keeps float32 there. Weights, their gradients, Adam and the backbones
stay float32 (with hidden 64, casting the backbone's small matmuls costs more than it saves); evaluation scores in
float32, because bfloat16 scores tie often enough to move the ranks.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """From the kernel's CPU flags (Linux); False where they cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in NATIVE_BF16_FLAGS)


def training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """What srs.precision means on this device: float32 or bfloat16."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
