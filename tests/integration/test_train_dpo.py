"""The DPO stage from the CLI: starts at log 2 (policy = reference), the loss falls, reference
log-probs are cached and kept with the output, and the online reference gives the same run;
SimPO trains with no reference at all, and rpo_alpha adds the chosen replies' NLL."""

from __future__ import annotations

import json
import math

import pytest
from train_support import assert_hub_artifact, committed, history, run_workers, write_spec, write_word_pairs
from transformers import AutoModelForCausalLM

TINY = {"learning_rate": 1e-3, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 128,
            "warmup_steps": 0, "lr_scheduler": "constant", "log_every": 1, "eval_every": 0, "save_every": 0,
            "eval_fraction": 0.1, "beta": 0.1, "seed": 11}


def test_dpo_on_two_processes_with_precomputed_reference(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=18)
    config = {**TINY, "max_steps": 8, "zero_stage": 3, "beta": 0.5}
    spec = write_spec(tmp_path, "dpo", {"model": tiny_model_dir, "train": data}, config)
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
    assert_hub_artifact(folder, "dpo", config, metrics, "text-generation")
    card = (folder / "README.md").read_text()
    assert "| beta | 0.5 |" in card and "| loss_type | sigmoid |" in card and "| global_batch_size | 8 |" in card


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


def test_simpo_trains_without_any_reference(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=12)
    spec = write_spec(tmp_path, "dpo", {"model": tiny_model_dir, "train": data},
                      {**TINY, "max_steps": 6, "zero_stage": 0, "loss_type": "simpo", "beta": 2.0,
                       "simpo_gamma": 0.5, "eval_fraction": 0.0})
    run_workers("dpo", spec, nproc=1)
    folder, metrics = committed(tmp_path, "runs/t/dpo")
    steps = history(folder)
    # nothing of a reference: no cached or kept log-probs, no reference metrics
    assert metrics["reference_free"] == 1.0 and metrics["reference_online"] == 0.0
    assert "reference_chosen_logps_mean" not in metrics
    assert not (folder / "reference_logps.json").exists()
    assert not list((tmp_path / "work").rglob("reference-logps-*"))
    assert "is reference-free" in (tmp_path / f"{spec.stem}-rank0.log").read_text()
    # 3 micro-batches an epoch: the second epoch against the first, over the same pairs
    first, second = steps[:3], steps[3:]
    assert sum(r["loss"] for r in second) / 3 < sum(r["loss"] for r in first) / 3 - 0.1
    assert sum(r["reward_margin"] for r in second) > sum(r["reward_margin"] for r in first)
    assert {"reward_accuracy", "reward_chosen", "reward_rejected", "logps_chosen"} <= set(steps[0])


def test_rpo_alpha_adds_the_chosen_nll_to_the_dpo_loss(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=12)
    spec = write_spec(tmp_path, "dpo", {"model": tiny_model_dir, "train": data},
                      {**TINY, "max_steps": 1, "zero_stage": 0, "rpo_alpha": 0.5, "eval_fraction": 0.0})
    run_workers("dpo", spec, nproc=1)
    folder, _ = committed(tmp_path, "runs/t/dpo")
    first = history(folder)[0]
    # policy == reference at step 1: DPO gives log 2, RPO adds 0.5 x the per-token NLL of the chosen replies
    assert first["nll_chosen"] > 0
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * first["nll_chosen"], abs=1e-4)
