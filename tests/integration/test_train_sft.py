"""SFT and RS from the CLI on 2 CPU processes (gloo): the loss falls, the output folder is a
model transformers loads and generates with, with its model card and TensorBoard events; the
configured trackers (an MLflow file store, W&B offline) hold the same numbers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from train_support import (
    REPO,
    assert_hub_artifact,
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


def assert_tracked(uri: str, experiment: str, steps: list[dict]) -> None:
    """The MLflow run of the stage holds every logged loss."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores only when asked
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["xwin.stage"] == "sft"
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert logged == [(r["step"], r["loss"]) for r in steps]
    assert float(run.data.tags["final.world_size"]) == 2


def test_sft_on_two_processes_started_as_an_indexed_job_pod(tmp_path, tiny_model_dir):
    """The pod's process starts its 2 workers itself (XWIN_NPROC_PER_NODE=2); ZeRO-3 shards are
    gathered into one HF folder; packed rows."""
    data = write_conversations(tmp_path / "conversations.jsonl", count=48)
    mlruns = (tmp_path / "mlruns").as_uri()
    tracking = {}
    with_mlflow, with_wandb = (importlib.util.find_spec(name) is not None for name in ("mlflow", "wandb"))
    if with_mlflow:
        tracking["mlflow"] = {"tracking_uri": mlruns, "experiment": "sft-test"}
    if with_wandb:
        tracking["wandb"] = {"project": "xwin-test", "mode": "offline", "dir": str(tmp_path / "wb")}
    config = {**TINY, "max_steps": 6, "zero_stage": 3, "batching": "packed", "tracking": tracking}
    spec = write_spec(tmp_path, "sft", {"model": tiny_model_dir, "train": data}, config)
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
    assert_hub_artifact(folder, "sft", config, metrics, "text-generation")
    if with_mlflow:
        assert_tracked(mlruns, "sft-test", steps)
    if with_wandb:
        (log_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")  # W&B's offline log
        raw = log_file.read_bytes()
        assert b"train/loss" in raw and json.dumps(steps[-1]["loss"]).encode() in raw
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
    assert_hub_artifact(folder, "rs", {**TINY, "micro_batch_size": 2}, metrics, "text-generation")


@pytest.mark.slow
def test_vllm_serves_a_trained_folder_as_it_is(tmp_path, vllm_tiny_model_dir):
    """The sft output (weights, card, metrics.jsonl, tensorboard/ beside them) is what the sample
    stage's vLLM engine loads, with no conversion."""
    data = write_conversations(tmp_path / "conversations.jsonl", count=16)
    spec = write_spec(tmp_path, "sft", {"model": vllm_tiny_model_dir, "train": data},
                      {**TINY, "max_steps": 2, "zero_stage": 0, "eval_every": 0})
    run_workers("sft", spec, nproc=1)
    folder, _ = committed(tmp_path, "runs/t/sft")
    assert (folder / "README.md").is_file() and (folder / "tensorboard").is_dir()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [
        {"role": "user", "content": f"Repeat the word {w}."}]}) + "\n" for i, w in enumerate(("apple", "river"))))
    sample = write_spec(tmp_path, "sample", {"model": folder, "prompts": prompts},
                        {"backend": "vllm", "dtype": "float32", "responses_per_prompt": 2, "max_new_tokens": 4,
                         "max_model_len": 256, "gpu_memory_utilization": 0.3, "seed": 1, "max_rounds": 1})
    done = subprocess.run([sys.executable, "-m", "xwin.cli", "stage", "sample", "--config", str(sample)],
                          check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["metrics"]["prompts"] == 2
