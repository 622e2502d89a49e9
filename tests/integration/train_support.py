"""Running training stages the way the local executor does: `python -m xwin.cli stage NAME
--config SPEC` processes with RANK/WORLD_SIZE/MASTER_* set (or an Indexed-Job pod's variables),
plus small synthetic datasets whose right answers are known."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.core.net import free_port

REPO = Path(__file__).resolve().parents[2]
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket",
         "garden", "mirror", "candle", "forest", "window", "bridge", "silver", "orange"]


def write_conversations(path: Path, count: int = 48, seed: int = 0) -> Path:
    """Multi-turn chats: repeat a word (a second turn every third chat)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(count):
            w, v = rng.choice(WORDS), rng.choice(WORDS)
            messages = [{"role": "user", "content": f"Repeat the word {w}."},
                        {"role": "assistant", "content": f"{w} {w} {w}"}]
            if i % 3 == 0:
                messages += [{"role": "user", "content": f"And now {v}?"},
                             {"role": "assistant", "content": f"{v} {v}"}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_word_pairs(path: Path, count: int, seed: int = 1, multi_turn_every: int = 4) -> Path:
    """Preference pairs where the preferred reply is knowable: chosen says the word the user
    asked for, rejected says another word. Some contexts have an earlier exchange."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(count):
            w, v = rng.sample(WORDS, 2)
            context = [{"role": "user", "content": f"Say the word {w}."}]
            if multi_turn_every and i % multi_turn_every == 0:
                u = rng.choice(WORDS)
                context = [{"role": "user", "content": f"Say the word {u}."},
                           {"role": "assistant", "content": u}] + context
            f.write(json.dumps({"context": context, "chosen": w, "rejected": v}) + "\n")
    return path


def write_spec(tmp: Path, stage: str, inputs: dict, config: dict, output: str | None = None,
               run_id: str = "t") -> Path:
    spec = {
        "stage": stage,
        "run_id": run_id,
        "store": {"kind": "local", "root": str(tmp / "store")},
        "workdir": str(tmp / "work"),
        "inputs": {k: str(v) for k, v in inputs.items()},
        "output": output or f"runs/{run_id}/{stage}",
        "config": config,
    }
    path = tmp / f"{stage}-{run_id}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def store(tmp: Path):
    return open_store(StoreConfig(kind="local", root=tmp / "store"))


def process_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "JOB_COMPLETION_INDEX", "XWIN_NNODES", "XWIN_NPROC_PER_NODE")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO), **extra)
    return env


def start_workers(stage: str, spec: Path, nproc: int = 2, log_dir: Path | None = None,
                  attempt: int = 1) -> list[subprocess.Popen]:
    """nproc worker processes of attempt `attempt`, as the local executor starts them."""
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        env = process_env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                    "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                    "XWIN_STAGE_ATTEMPT": str(attempt)})
        with open((log_dir or spec.parent) / f"{spec.stem}-rank{rank}.log", "w") as log:  # the child keeps its copy
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "xwin.cli", "stage", stage, "--config", str(spec)],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen], spec: Path, timeout: float = 600) -> None:
    for p in procs:
        p.wait(timeout=timeout)
    if any(p.returncode != 0 for p in procs):
        logs = "\n".join(p.read_text()[-3000:] for p in sorted(spec.parent.glob(f"{spec.stem}-rank*.log")))
        raise AssertionError(f"stage failed: exit codes {[p.returncode for p in procs]}\n{logs}")


def run_workers(stage: str, spec: Path, nproc: int = 2, attempt: int = 1) -> None:
    wait_all(start_workers(stage, spec, nproc, attempt=attempt), spec)


def run_indexed_job_pod(stage: str, spec: Path, nproc_per_node: int = 2, timeout: float = 600) -> str:
    """One pod of a one-node Indexed Job: the process starts its own workers."""
    env = process_env({"JOB_COMPLETION_INDEX": "0", "XWIN_NNODES": "1", "XWIN_NPROC_PER_NODE": str(nproc_per_node),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    done = subprocess.run([sys.executable, "-m", "xwin.cli", "stage", stage, "--config", str(spec)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


def committed(tmp: Path, key: str) -> tuple[Path, dict]:
    """The committed output folder and its metrics."""
    s = store(tmp)
    manifest = s.manifest(key)
    assert manifest is not None, f"{key} was not committed"
    return s.fetch(key), manifest.metadata["metrics"]


def history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def tensorboard_series(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar series in the event files under `folder`, read back by
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_hub_artifact(folder: Path, stage: str, config: dict, metrics: dict, pipeline_tag: str) -> None:
    """The folder follows the Hub's conventions (card, generation config, chat template) and its
    card and TensorBoard events hold the run's config and numbers."""
    import pytest
    from huggingface_hub import metadata_load

    from xwin.models.card import has_chat_template

    meta = metadata_load(folder / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == pipeline_tag
    assert meta["tags"][:2] == ["xwin", stage]
    card = (folder / "README.md").read_text()
    for name in ("learning_rate", "micro_batch_size", "max_length", "seed"):
        assert f"| {name} | {config[name]:.6g} |" in card if isinstance(config[name], float) \
            else f"| {name} | {config[name]} |" in card, name
    assert f"| train | {int(metrics['split_train'])} |" in card and f"| eval | {int(metrics['split_eval'])} |" in card
    for name in ("train_loss", "eval_loss"):
        if name in metrics:
            assert f"| {name} | {metrics[name]:.6g} |" in card, name
    assert (folder / "generation_config.json").is_file() and has_chat_template(folder)

    steps = history(folder)
    series = tensorboard_series(folder / "tensorboard")
    assert [s for s, _ in series["train/loss"]] == [r["step"] for r in steps]
    assert [v for _, v in series["train/loss"]] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    evals = [(r["step"], r["eval_loss"]) for r in steps if "eval_loss" in r]
    assert [s for s, _ in series.get("eval/loss", [])] == [s for s, _ in evals]


def assert_vllm_samples(tmp: Path, folder: Path) -> None:
    """The sample stage's vLLM engine loads `folder` as it is and samples 2 answers to a prompt."""
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "capital", "messages": [
        {"role": "user", "content": "What is the capital of France?"}]}) + "\n")
    sample = write_spec(tmp, "sample", {"model": folder, "prompts": prompts},
                        {"backend": "vllm", "responses_per_prompt": 2, "temperature": 1.0, "max_new_tokens": 16,
                         "seed": 1, "dtype": "auto", "max_model_len": 512, "gpu_memory_utilization": 0.3})
    done = subprocess.run([sys.executable, "-m", "xwin.cli", "stage", "sample", "--config", str(sample)],
                          env=process_env({}), cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["metrics"]["responses"] == 2
