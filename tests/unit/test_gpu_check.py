"""The GPU check's arithmetic: the device table behind MFU, MFU itself and the parameter count
it uses; and its refusal to run without CUDA unless asked for the CPU smoke version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L40", 181.0),
    ("NVIDIA A10", 125.0),
    ("NVIDIA B200", 2250.0),
])
def test_peak_bf16_tflops_by_device_name(name, tflops):
    assert gpu_check.peak_bf16_tflops(name) == tflops


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4090", "cpu"])
def test_a_device_not_in_the_table_has_no_peak(name):
    assert gpu_check.peak_bf16_tflops(name) is None


def test_mfu_is_six_flops_per_parameter_and_token_over_the_peak():
    # SmolLM2-135M at 100k tokens/s on an H100: 6 * 134.5e6 * 1e5 = 8.07e13 of 9.89e14 FLOP/s
    assert gpu_check.model_flops_utilization(134_515_008, 100_000, 989.0) == pytest.approx(0.081607, rel=1e-4)


def test_parameters_are_counted_from_the_files_as_torch_counts_them(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.tie_word_embeddings  # the shared head is counted once, as in the file
    assert gpu_check.count_parameters(tiny_model_dir) == sum(p.numel() for p in model.parameters())


def test_markdown_table_shows_numbers_and_failures():
    rows = {"sft": gpu_check.Row("sft", 12345.6, 3 * 2**30, 0.4123, "60 steps", 41.0),
            "score": gpu_check.Row("score", error="timed out | after 90 s", elapsed_s=90.0)}
    lines = gpu_check.markdown_table(rows).splitlines()
    assert lines[2] == "| sft | 12,346 | 3.00 | 41.2% | 60 steps | 41.0 |"
    assert lines[3] == "| score | - | - | - | FAILED: timed out / after 90 s | 90.0 |"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_exits_2_and_says_how_to_run_the_smoke_version(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(tmp_path / "o.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--allow-cpu" in done.stderr
    assert not (tmp_path / "o.json").exists()
