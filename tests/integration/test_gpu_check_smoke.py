"""benchmarks/gpu_check.py --allow-cpu, the CPU smoke version of the GPU check: every row runs
(the real sft and dpo stages, LoRA DPO, vLLM and HF generation, reward-model scoring), each
with positive numbers, and MFU is what the parameter count and tokens/s make it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from train_support import REPO, process_env

ROWS = ["sft", "dpo", "dpo_lora", "generate_vllm", "generate_hf", "score"]
WITH_MEMORY = {"sft", "dpo", "dpo_lora", "score"}
PEAK_TFLOPS = 0.5  # a nominal CPU figure: MFU has no device table entry on the CPU


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke version; on a GPU run the check itself")
def test_cpu_smoke_version_reports_every_row_with_positive_numbers(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--allow-cpu",
                           "--peak-tflops", str(PEAK_TFLOPS), "--out", str(out)],
                          capture_output=True, text=True, timeout=1500, check=False, cwd=REPO,
                          env=process_env({}))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert list(rows) == ROWS
    for name, row in rows.items():
        assert row["error"] is None, name
        assert row["tokens_per_s"] > 0 and row["elapsed_s"] > 0, name
        assert (row["peak_memory_bytes"] or 0) > 0 if name in WITH_MEMORY else row["peak_memory_bytes"] is None, name
        assert f"| {name} | " in done.stdout  # the markdown table

    model = AutoModelForCausalLM.from_pretrained(report["model"])
    parameters = sum(p.numel() for p in model.parameters())
    assert report["parameters"] == parameters
    for name in ("sft", "dpo"):
        expected = 6 * parameters * rows[name]["tokens_per_s"] / (PEAK_TFLOPS * 1e12)
        assert rows[name]["mfu"] == pytest.approx(expected, rel=1e-9)
    assert rows["dpo_lora"]["mfu"] is None and "adapter parameters" in rows["dpo_lora"]["details"]
    assert "vLLM / HF" in rows["generate_hf"]["details"]
    assert report["total_s"] <= report["budget_s"]
