"""Checkpoint and resume: a run SIGKILLed after a checkpoint and started again with the same spec
(the next attempt, which writes its own checkpoints) continues from the committed checkpoint
(same step, data position, optimizer and LR state) and ends exactly where an uninterrupted run
ends."""

from __future__ import annotations

import json
import signal
import time

import pytest
from train_support import (
    committed,
    history,
    run_workers,
    start_workers,
    store,
    tensorboard_series,
    write_conversations,
    write_spec,
)

CONFIG = {"learning_rate": 2e-3, "max_steps": 16, "micro_batch_size": 2, "gradient_accumulation_steps": 2,
          "max_length": 128, "zero_stage": 2, "warmup_steps": 2, "lr_scheduler": "cosine", "log_every": 1,
          "eval_every": 8, "save_every": 4, "eval_fraction": 0.1, "batching": "length_grouped",
          "gradient_checkpointing": False, "seed": 5}


def test_a_killed_run_resumes_and_reaches_the_uninterrupted_final_loss(tmp_path, tiny_model_dir):
    data = write_conversations(tmp_path / "conversations.jsonl", count=48)
    inputs = {"model": tiny_model_dir, "train": data}

    straight = write_spec(tmp_path, "sft", inputs, CONFIG, run_id="straight")
    run_workers("sft", straight)
    _, straight_metrics = committed(tmp_path, "runs/straight/sft")

    killed = write_spec(tmp_path, "sft", inputs, CONFIG, run_id="killed")
    procs = start_workers("sft", killed)
    artifacts = store(tmp_path)
    pointer = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        raw = artifacts.get_record("runs/killed/sft.ckpt/attempt-killed-1/latest")
        if raw and json.loads(raw).get("tag"):
            pointer = json.loads(raw)
            break
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert pointer is not None, "no checkpoint was committed before the run ended"
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert not artifacts.exists("runs/killed/sft")  # it really was cut short

    run_workers("sft", killed, attempt=2)  # the same spec again, as the controller's retry
    folder, metrics = committed(tmp_path, "runs/killed/sft")
    resumed_at = metrics["resumed_from_step"]
    assert resumed_at >= pointer["step"] >= 4 and resumed_at % 4 == 0 and resumed_at < 16

    straight_steps = history(committed(tmp_path, "runs/straight/sft")[0])
    resumed_steps = history(folder)
    assert [r["step"] for r in resumed_steps] == [r["step"] for r in straight_steps] == list(range(1, 17))
    for a, b in zip(straight_steps, resumed_steps):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), f"step {a['step']}"
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    assert metrics["train_loss"] == pytest.approx(straight_metrics["train_loss"], abs=1e-5)
    assert metrics["eval_loss"] == pytest.approx(straight_metrics["eval_loss"], abs=1e-5)
    assert metrics["tokens"] == straight_metrics["tokens"]
    # the resumed run's TensorBoard events hold the whole run once, as metrics.jsonl does
    losses = tensorboard_series(folder / "tensorboard")["train/loss"]
    assert [step for step, _ in losses] == list(range(1, 17))
    assert [v for _, v in losses] == pytest.approx([r["loss"] for r in resumed_steps], rel=1e-6)
    # finished: the checkpoints are gone from the store
    assert artifacts.list("runs/killed/sft.ckpt/") == []
