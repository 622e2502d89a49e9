"""The whole eval path with a real local judge: `xwin stage eval` (the command a Job runs)
starts SmolLM2-135M-Instruct behind vLLM's OpenAI-compatible server on the CPU, judges
SmolLM2 against a tiny random model on five MT-bench questions, writes tables and plots, and
stops the server; the rerun is answered entirely from the caches and starts no server."""

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

QUESTION_IDS = [81, 101, 111, 131, 141]  # writing, reasoning, math, extraction, stem


def run_cli(spec: Path) -> tuple[dict, str, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "xwin.cli", "stage", "eval", "--config", str(spec)],
                          check=False, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)["metrics"], proc.stderr, elapsed


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_eval_with_a_local_vllm_judge_then_rerun_from_cache(tmp_path, smollm2_dir, tiny_model_dir):
    spec = tmp_path / "eval.yaml"
    spec.write_text(yaml.safe_dump({
        "stage": "eval", "run_id": "slow", "output": "eval/smollm2",
        "store": {"kind": "local", "root": str(tmp_path / "store")},
        "workdir": str(tmp_path / "work"),
        "inputs": {"model:smollm2": str(smollm2_dir), "model:tiny": str(tiny_model_dir),
                   "judge": str(smollm2_dir)},
        "config": {
            "engine": {"backend": "hf", "dtype": "auto"},
            "generation": {"temperature": 0.0, "max_new_tokens": 48},
            "mtbench": {"question_ids": QUESTION_IDS},
            # a 135M judge keeps the verdict format only when decoding is constrained to it
            "judge": {"constrain_verdict": True, "max_tokens": 64, "max_concurrency": 8,
                      "server": {"max_model_len": 4096, "kv_cache_gib": 1.0}},
        },
    }))
    metrics, log, elapsed = run_cli(spec)
    print(f"eval wall time, first run: {elapsed:.0f} s; metrics: {json.dumps(metrics)}")

    out = tmp_path / "work" / "slow" / "eval" / "output"
    results = json.loads((out / "results.json").read_text())
    single = results["mtbench"]["single"]
    assert set(single) == {"smollm2", "tiny"}
    for model in single.values():
        assert model["judged"] == 10  # 5 questions x 2 turns
        assert model["rated"] + model["unparseable"] + model["errors"] == 10
    assert results["judge"]["server_started"] is True
    assert metrics["judge/requests"] >= 20 and metrics["judge/completions"] >= 20
    (pair,) = results["mtbench"]["pairwise"]
    assert pair["n"] + pair["error"] == 10
    agreement = results["judge"]["swap_agreement"]
    assert agreement is not None and 0.0 <= agreement <= 1.0
    print(f"judge self-agreement under position swap: {agreement:.2f}; "
          f"MT-bench: smollm2 {single['smollm2']['score']:.2f}, tiny {single['tiny']['score']:.2f}; "
          f"smollm2 vs tiny win rate {pair['win_rate']:.2f}")
    report = (out / "report.md").read_text()
    assert "| smollm2 |" in report and "| tiny |" in report
    for png in ("mtbench_scores.png", "win_rates.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # the judge server is gone once the stage ends
    port = int(re.search(r"--port (\d+)", log)[1])
    assert port_is_closed(port)

    metrics2, log2, elapsed2 = run_cli(spec)
    print(f"eval wall time, rerun from cache: {elapsed2:.0f} s")
    assert metrics2["judge/requests"] == 0 and metrics2["judge/server_started"] == 0
    assert metrics2["answers/generated"] == 0
    assert "starting judge server" not in log2
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["mtbench"] == results["mtbench"]
