"""The real model: SFT of SmolLM2-135M-Instruct for a few steps, then its output folder served by
vLLM through the sample stage exactly as the pipeline does, and still answering correctly with
transformers (the export kept every weight in place)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_support import (
    REPO,
    committed,
    history,
    process_env,
    run_workers,
    write_conversations,
    write_spec,
)
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.mark.slow
def test_sft_of_smollm2_loads_in_transformers_and_vllm(tmp_path, smollm2_dir):
    data = write_conversations(tmp_path / "conversations.jsonl", count=16)
    spec = write_spec(tmp_path, "sft", {"model": smollm2_dir, "train": data},
                      {"learning_rate": 1e-6, "max_steps": 2, "micro_batch_size": 2,
                       "gradient_accumulation_steps": 1, "max_length": 128, "zero_stage": 0,
                       "gradient_checkpointing": True, "log_every": 1, "eval_every": 0,
                       "save_every": 0, "eval_fraction": 0.0, "warmup_steps": 0})
    run_workers("sft", spec, nproc=1)
    folder, _ = committed(tmp_path, "runs/t/sft")
    assert len(history(folder)) == 2

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "capital", "messages": [
        {"role": "user", "content": "What is the capital of France?"}]}) + "\n")
    sample = write_spec(tmp_path, "sample", {"model": folder, "prompts": prompts},
                        {"backend": "vllm", "responses_per_prompt": 2, "temperature": 1.0, "max_new_tokens": 16,
                         "seed": 1, "dtype": "auto", "max_model_len": 512, "gpu_memory_utilization": 0.3})
    done = subprocess.run([sys.executable, "-m", "xwin.cli", "stage", "sample", "--config", str(sample)],
                          env=process_env({}), cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["metrics"]["responses"] == 2
