"""dtype `auto`: bfloat16 only where the CPU (or GPU) runs it natively."""

from __future__ import annotations

import pytest

from xwin.core import hardware
from xwin.sampling.generation import EngineOptions
from xwin.train.config import TrainConfig
from xwin.train.deepspeed_setup import load_dtype

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma sha_ni vaes\n"
ICELAKE = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"  # AVX-512, but no bf16 extension
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [
    (SAPPHIRE_RAPIDS, True), (EPYC_ZEN3, False), (ICELAKE, False), (GRAVITON3, True), ("", False),
])
def test_native_bf16_is_read_from_cpu_flags(cpuinfo, native):
    assert hardware.cpu_has_native_bf16(cpuinfo) is native


@pytest.mark.parametrize(("forced", "expected"), [("1", "bfloat16"), ("0", "float32")])
def test_auto_follows_the_cpu(monkeypatch, forced, expected):
    monkeypatch.setenv(hardware.CPU_BF16_ENV, forced)
    assert hardware.resolve_dtype("auto") == expected
    assert load_dtype(TrainConfig(bf16="auto")) == expected
    assert hardware.resolve_dtype("float16") == "float16"  # a named dtype is kept as it is
    assert load_dtype(TrainConfig(bf16=False)) == "float32"


def test_auto_is_the_engine_default():
    assert EngineOptions().dtype == "auto"
