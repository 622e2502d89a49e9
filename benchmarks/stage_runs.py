"""Training stages run as benchmark measurements, shared by memory.py and gpu_check.py: synthetic
data with reply lengths in a chosen range, the stage spec (as tests/integration/train_support.py
writes it), and the stage itself in a fresh process (`xwin.stages.registry.run_stage`, what
`xwin stage NAME --config SPEC` calls, as one worker of one) that reports its peak memory and
the training loop's own tokens/s.

    python benchmarks/stage_runs.py STAGE SPEC    (the worker: prints `RESULT {json}` last)

Peak memory. On a GPU: torch.cuda.max_memory_allocated (what tensors took, not what the caching
allocator holds). On the CPU: the process's peak RSS (resource.getrusage) less its peak RSS
after the imports (torch, DeepSpeed, transformers, peft, the trainers), so the interpreter and
libraries are not counted; it is coarser (file pages of the mmapped safetensors count while a
model loads). Two figures: `train_peak_bytes`, read when the training loop returns, before the
export; and `stage_peak_bytes`, the whole stage. They differ on the CPU, where the export copies
the weights (a LoRA export loads a second base to merge the adapters into).

tokens/s: the loop's `tokens_per_s` (non-pad tokens, DPO: both replies with their context) of
every logged window but the first (start-up: CUDA kernels, allocator growth), median.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket",
         "garden", "mirror", "candle", "forest", "window", "bridge", "silver", "orange"]
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "JOB_COMPLETION_INDEX", "XWIN_NNODES", "XWIN_NPROC_PER_NODE", "XWIN_STAGE_ATTEMPT")


def words(rng: random.Random, span: tuple[int, int]) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*span)))


def write_chats(path: Path, count: int, reply_words: tuple[int, int], seed: int = 0) -> Path:
    """Conversations JSONL: a question and a reply of `reply_words` random words."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(count):
            messages = [{"role": "user", "content": f"Tell me about the {rng.choice(WORDS)}."},
                        {"role": "assistant", "content": words(rng, reply_words)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_pairs(path: Path, count: int, reply_words: tuple[int, int], seed: int = 1) -> Path:
    """Preference pairs JSONL, both replies of `reply_words` random words."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(count):
            context = [{"role": "user", "content": f"Tell me about the {rng.choice(WORDS)}."}]
            f.write(json.dumps({"context": context, "chosen": words(rng, reply_words),
                                "rejected": words(rng, reply_words)}) + "\n")
    return path


def train_config(steps: int, micro_batch: int, max_length: int, log_every: int, **extra) -> dict:
    """A stage config for timing: no evaluation, no checkpoints, a constant rate, one
    micro-batch a step; `extra` overrides (zero_stage, bf16, lora, reference, ...)."""
    return {"max_steps": steps, "micro_batch_size": micro_batch, "gradient_accumulation_steps": 1,
            "max_length": max_length, "learning_rate": 1e-5, "lr_scheduler": "constant", "warmup_steps": 0,
            "eval_fraction": 0.0, "eval_every": 0, "save_every": 0, "log_every": log_every, "zero_stage": 0,
            "gradient_checkpointing": False, "seed": 0, **extra}


def write_spec(folder: Path, stage: str, inputs: dict, config: dict) -> Path:
    """The stage spec of one measurement; `folder` is its own (store, workdir: no cache shared)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"stage": stage, "run_id": "bench", "store": {"kind": "local", "root": str(folder / "store")},
            "workdir": str(folder / "work"), "inputs": {k: str(v) for k, v in inputs.items()},
            "output": f"runs/bench/{stage}", "config": config}
    path = folder / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def worker_env() -> dict[str, str]:
    """This environment without a launcher's variables (the stage then runs as a single process
    on a free port) and with this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_measurement(command: list[str], timeout: float) -> dict:
    """Run a worker (`RESULT {json}` on its last such line) in a fresh process; its result with
    the wall time of the whole process (imports and start-up included) as elapsed_s. A failure
    or a timeout raises RuntimeError with the end of the worker's output."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                              env=worker_env(), cwd=REPO)
    except subprocess.TimeoutExpired as e:
        tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        raise RuntimeError(f"timed out after {timeout:.0f} s:\n{tail[-3000:]}") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"exit code {done.returncode}: {cause(done.stderr)}\n{done.stderr[-4000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "elapsed_s": round(time.perf_counter() - started, 1)}


def cause(stderr: str) -> str:
    """The most telling line of a failed worker's output: its last exception message (vLLM's
    engine reports the root cause in a log line, not the traceback's last line)."""
    errors = re.findall(r"\b(\w*(?:Error|Exception): .+)$", stderr, flags=re.MULTILINE)
    root = [e for e in errors if "Worker failed" not in e and "EngineCore encountered" not in e]
    lines = [line for line in stderr.splitlines() if line.strip()]
    return (root or errors or lines or ["no output"])[-1].strip()[:300]


def measure_stage(stage: str, spec: Path, timeout: float = 600) -> dict:
    """One stage run in its own process (see the module docstring for what it reports)."""
    return run_measurement([sys.executable, str(Path(__file__).resolve()), stage, str(spec)], timeout)


def rss_peak_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def memory_reader():
    """(kind, peak()): CUDA's allocated peak on a GPU, else the RSS peak over the RSS after the
    imports; call it after importing what the stage imports."""
    import torch

    if torch.cuda.is_available():
        return "cuda max_memory_allocated", torch.cuda.max_memory_allocated
    baseline = rss_peak_bytes()
    return "cpu peak RSS over post-import RSS", lambda: rss_peak_bytes() - baseline


def probe_training_peak(peak, into: dict) -> None:
    """Record peak() when a trainer's loop returns: each trainer module calls `train` by its own
    name (from xwin.train.loop import train), so that name is wrapped in each of them."""
    from xwin.train import dpo, loop, rm, sft

    for module in (sft, dpo, rm):
        if getattr(module, "train", None) is not loop.train:
            raise RuntimeError(f"{module.__name__} no longer calls xwin.train.loop.train by that name; "
                               "update benchmarks/stage_runs.py")

        def wrapped(*args, **kwargs):
            result = loop.train(*args, **kwargs)
            into["train_peak_bytes"] = peak()
            return result

        module.train = wrapped


def loop_tokens_per_s(records: list[dict]) -> float:
    """Median tokens_per_s over the logged windows, the first (start-up) left out when there are
    others."""
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    if not rates:
        raise RuntimeError("the stage logged no tokens_per_s")
    return statistics.median(rates[1:] or rates)


def worker(stage: str, spec_path: Path) -> None:
    import deepspeed  # noqa: F401  (imported before the baseline: libraries are not the stage's memory)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from xwin.artifacts.factory import open_store
    from xwin.artifacts.stage_io import StageSpec
    from xwin.stages.registry import run_stage
    from xwin.train import dpo, rm, sft  # noqa: F401

    kind, peak = memory_reader()
    result: dict = {"memory": kind}
    probe_training_peak(peak, result)
    started = time.perf_counter()
    metrics = run_stage(stage, spec_path)
    result["stage_s"] = round(time.perf_counter() - started, 2)
    result["stage_peak_bytes"] = peak()
    spec = StageSpec.from_file(spec_path)
    folder = open_store(spec.store).fetch(spec.output)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    result.update(tokens_per_s=loop_tokens_per_s(records), windows=len(records), steps=metrics.get("step"),
                  loss_first=records[0].get("loss"), loss_last=records[-1].get("loss"),
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  **{k: v for k, v in metrics.items() if k.startswith("lora_") or k.startswith("reference_")})
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    worker(sys.argv[1], Path(sys.argv[2]))
