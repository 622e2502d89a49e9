"""The real model: SFT of SmolLM2-135M-Instruct for a few steps, then its output folder served by
vLLM through the sample stage exactly as the pipeline does, and still answering correctly with
transformers (the export kept every weight in place)."""

from __future__ import annotations

import pytest
from train_support import (
    assert_vllm_samples,
    committed,
    history,
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

    assert_vllm_samples(tmp_path, folder)
