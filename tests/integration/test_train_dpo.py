"""The DPO stage from the CLI: starts at log 2 (policy = reference), the loss falls, reference
log-probs are cached and kept with the output, and the online reference gives the same run."""

from __future__ import annotations

import json
import math

import pytest
from train_support import committed, history, run_workers, write_spec, write_word_pairs
from transformers import AutoModelForCausalLM

TINY = {"learning_rate": 1e-3, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 128,
            "warmup_steps": 0, "lr_scheduler": "constant", "log_every": 1, "eval_every": 0, "save_every": 0,
            "eval_fraction": 0.1, "beta": 0.1, "seed": 11}


def test_dpo_on_two_processes_with_precomputed_reference(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=18)
    spec = write_spec(tmp_path, "dpo", {"model": tiny_model_dir, "train": data},
                      {**TINY, "max_steps": 8, "zero_stage": 3, "beta": 0.5})
    run_workers("dpo", spec)
    folder, metrics = committed(tmp_path, "runs/t/dpo")
    steps = history(folder)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert sum(r["loss"] for r in steps[-3:]) / 3 < math.log(2) - 0.1
    assert all(r["reward_margin"] > 0 for r in steps[-3:])
    assert {"reward_accuracy", "reward_chosen", "reward_rejected", "logps_chosen"} <= set(steps[0])
    assert "eval_loss" in metrics and "eval_reward_accuracy" in metrics
    assert metrics["reference_online"] == 0.0 and metrics["world_size"] == 2

    kept = json.loads((folder / "reference_logps.json").read_text())
    assert len(kept["chosen"]) == len(kept["rejected"]) == 18
    assert all(x < 0 for x in kept["chosen"] + kept["rejected"])
    assert metrics["reference_chosen_logps_mean"] == pytest.approx(sum(kept["chosen"]) / 18, rel=1e-5)
    assert len(list((tmp_path / "work" / "t" / "dpo").glob("reference-logps-*.pt"))) == 1
    AutoModelForCausalLM.from_pretrained(folder)


def test_online_reference_trains_exactly_like_the_precomputed_one(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=12)
    losses = {}
    for reference in ("precompute", "online"):
        spec = write_spec(tmp_path, "dpo", {"model": tiny_model_dir, "train": data},
                          {**TINY, "max_steps": 3, "zero_stage": 0, "reference": reference,
                           "loss_type": "ipo", "eval_fraction": 0.0},
                          run_id=reference)
        run_workers("dpo", spec, nproc=1)
        folder, metrics = committed(tmp_path, f"runs/{reference}/dpo")
        losses[reference] = [r["loss"] for r in history(folder)]
        assert metrics["reference_online"] == float(reference == "online")
    assert losses["online"] == pytest.approx(losses["precompute"], abs=1e-5)
    assert losses["online"][0] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-4)  # IPO at h = 0
