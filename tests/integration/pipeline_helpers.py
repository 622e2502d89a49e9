"""Helpers of the controller's integration tests: a tiny-model pipeline config, `xwin` run as a
real subprocess (as a user or `make demo` runs it), and reading the run record back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from xwin.controller.state import RunRecord

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path: Path, model_dir: Path, **sections: dict[str, Any]) -> Path:
    """A pipeline config on the tiny random Llama and a few records of real data: prepare
    imports 12 ShareGPT conversations, 4 prompts, 2 eval prompts, 2 MT-bench questions and 4
    stand-in pairs; sampling takes 2 responses of 6 tokens per prompt (HF backend)."""
    config: dict[str, Any] = {
        "run": {"name": "tiny", "workdir": str(tmp_path / "work"), "retry_backoff_s": 0.1},
        "store": {"root": str(tmp_path / "store")},
        "prepare": {"base_model": str(model_dir), "sft_conversations": 12, "prompts": 4,
                    "eval_prompts": 2, "mtbench_questions": 2,
                    "pairs": {"count": 4, "max_new_tokens": 6, "dtype": "float32"}},
        "sample": {"backend": "hf", "dtype": "float32", "responses_per_prompt": 2, "max_new_tokens": 6,
                   "chunk_prompts": 1},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def xwin_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "COLUMNS": "200"}


def xwin(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`xwin ARGS` as a subprocess; output captured for the assertion messages."""
    return subprocess.run([sys.executable, "-m", "xwin.cli", *args], cwd=cwd, env=xwin_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_xwin(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """`xwin ARGS` in the background, its output going to log."""
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "xwin.cli", *args], cwd=cwd,
                                env=xwin_env(), stdout=out, stderr=subprocess.STDOUT)


def records(workdir: Path) -> list[RunRecord]:
    """Every run's record (the local mirror), oldest first."""
    found = [RunRecord.model_validate_json(p.read_bytes())
             for p in sorted((workdir / "runs").glob("*/state.json"))]
    return sorted(found, key=lambda r: r.created_at)


def only_record(workdir: Path) -> RunRecord:
    found = records(workdir)
    assert len(found) == 1, [r.run_id for r in found]
    return found[0]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, proc=None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            value = None  # a record being replaced; look again
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"xwin exited with {proc.returncode} before: {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def running_stage_pids(workdir: Path, stage: str) -> list[int] | None:
    """The process groups of the stage's running attempt, once the controller recorded them."""
    found = records(workdir)
    if not found or stage not in found[-1].stages:
        return None
    state = found[-1].stages[stage]
    if state.status != "running" or not state.attempts or not state.attempts[-1].pids:
        return None
    return state.attempts[-1].pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr[-4000:]}"
