"""Which floating-point type runs fast on this machine. bfloat16 halves memory and is the right
default on GPUs that support it, but a CPU without native bf16 instructions (AVX512_BF16 or AMX
on x86, the bf16 extension on Arm) has torch emulate it: measured 47x slower than float32 for
SmolLM2-sized matmuls on an AVX2-only EPYC. So dtype `auto` is decided per machine, where the
stage runs, not in the config."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

AUTO = "auto"
# "1"/"0" overrides the CPU check: the test suite sets 0 so that `auto` means float32 on every
# CI machine, whatever its CPU, and the numbers tests compare do not change with it.
CPU_BF16_ENV = "XWIN_CPU_BF16"
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags, Arm Features


@lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """From /proc/cpuinfo's flags (x86) or Features (Arm) line; False where it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return bool(_NATIVE_BF16_FLAGS & set(value.split()))
    return False


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_is_fast() -> bool:
    """bfloat16 is native here: a GPU that supports it, else (no GPU) the CPU's instructions."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if (forced := os.environ.get(CPU_BF16_ENV)) in ("0", "1"):
        return forced == "1"
    return cpu_has_native_bf16()


def resolve_dtype(dtype: str) -> str:
    """`auto` -> bfloat16 where it is native, else float16 on an older GPU, else float32; any
    other name is returned as it is."""
    if dtype != AUTO:
        return dtype
    if bf16_is_fast():
        return "bfloat16"
    return "float16" if gpu_available() else "float32"
