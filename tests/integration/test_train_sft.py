"""SFT and RS from the CLI on 2 CPU processes (gloo): the loss falls and the output folder is a
model transformers loads and generates with."""

from __future__ import annotations

import json

import torch
from train_support import (
    committed,
    history,
    run_indexed_job_pod,
    run_workers,
    write_conversations,
    write_spec,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

TINY = {"learning_rate": 3e-3, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 128,
            "warmup_steps": 1, "log_every": 1, "eval_every": 3, "save_every": 0, "eval_fraction": 0.1, "seed": 7}


def assert_loads_and_generates(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Repeat the word apple."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4
    assert model.config.use_cache and model.config.tie_word_embeddings


def test_sft_on_two_processes_started_as_an_indexed_job_pod(tmp_path, tiny_model_dir):
    """The pod's process starts its 2 workers itself (XWIN_NPROC_PER_NODE=2); ZeRO-3 shards are
    gathered into one HF folder; packed rows."""
    data = write_conversations(tmp_path / "conversations.jsonl", count=48)
    spec = write_spec(tmp_path, "sft", {"model": tiny_model_dir, "train": data},
                      {**TINY, "max_steps": 6, "zero_stage": 3, "batching": "packed"})
    stdout = run_indexed_job_pod("sft", spec)
    assert json.loads(stdout.strip().splitlines()[-1])["metrics"]["world_size"] == 2  # the launcher's report

    folder, metrics = committed(tmp_path, "runs/t/sft")
    steps = history(folder)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.2
    assert steps[-1]["eval_loss"] < steps[2]["eval_loss"]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in steps)
    assert metrics["world_size"] == 2 and metrics["split_eval"] == 5
    assert_loads_and_generates(folder)
    # the trained weights differ from the start: training reached the saved folder
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert not torch.equal(start["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])


def test_rs_on_two_worker_processes_with_accumulation_and_cpu_offload(tmp_path, tiny_model_dir):
    """RS is SFT on the select stage's conversations: workers started like the local executor
    does, ZeRO-2 with the optimizer offloaded, gradient accumulation and checkpointing."""
    data = write_conversations(tmp_path / "best_of_n.jsonl", count=40, seed=5)
    spec = write_spec(tmp_path, "rs", {"model": tiny_model_dir, "train": data},
                      {**TINY, "max_steps": 4, "zero_stage": 2, "offload_optimizer": True,
                       "gradient_accumulation_steps": 2, "micro_batch_size": 2, "gradient_checkpointing": True,
                       "batching": "length_grouped"})
    run_workers("rs", spec)
    folder, metrics = committed(tmp_path, "runs/t/rs")
    steps = history(folder)
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.2
    assert metrics["world_size"] == 2 and metrics["step"] == 4
    assert_loads_and_generates(folder)
