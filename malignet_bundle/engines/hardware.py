"""What the machine's processor can do, for settings that pay off only on some CPUs."""

from __future__ import annotations

import torch

__all__ = ["native_bf16_on_cpu"]


def native_bf16_on_cpu() -> bool:
    """True when oneDNN has native bfloat16 kernels on this CPU (AVX-512 BF16 or AMX).

    Only there does bfloat16 autocast make a CPU training step faster (1.3–1.4x for the CPU configuration,
    docs/BENCHMARKS.md); elsewhere the conversions make it slower, so ``configs/cpu.json`` asks this.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the query: assume no
        return False
