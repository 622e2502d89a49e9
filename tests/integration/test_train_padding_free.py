"""padding_free: true through the stage entry (`xwin stage rm|dpo`): the same run as with padded
micro-batches, step for step (losses within 1e-5, stage metrics and held-out numbers within
1e-4 relative), with the
reference read the LoRA way (the policy with its adapters off) for DPO."""

from __future__ import annotations

import pytest
from train_support import committed, history, run_workers, write_spec, write_word_pairs

TINY = {"learning_rate": 1e-3, "micro_batch_size": 3, "gradient_accumulation_steps": 1, "max_length": 128,
        "warmup_steps": 0, "lr_scheduler": "constant", "log_every": 1, "eval_every": 0, "save_every": 0,
        "eval_fraction": 0.2, "seed": 5, "zero_stage": 0, "max_steps": 3}


def run_both(tmp_path, stage: str, data, config: dict) -> dict[bool, tuple[list[dict], dict]]:
    out = {}
    for padding_free in (False, True):
        run_id = "free" if padding_free else "padded"
        spec = write_spec(tmp_path, stage, {"model": data[0], "train": data[1]},
                          {**config, "padding_free": padding_free}, run_id=run_id)
        run_workers(stage, spec, nproc=1)
        folder, metrics = committed(tmp_path, f"runs/{run_id}/{stage}")
        out[padding_free] = history(folder), metrics
    return out


def assert_same_run(runs: dict, keys: list[str]) -> None:
    (padded, padded_metrics), (free, free_metrics) = runs[False], runs[True]
    assert len(free) == len(padded) == 3
    # float rounding differs between the layouts (~1e-7 a forward) and Adam at lr 1e-3 carries
    # it into the weights: the losses stay within 1e-5, the other numbers within 1e-4 relative
    assert [b["loss"] for b in free] == pytest.approx([a["loss"] for a in padded], abs=1e-5)
    for key in keys:
        assert [b[key] for b in free] == pytest.approx([a[key] for a in padded], rel=1e-4, abs=1e-6), key
    evals = sorted(k for k in padded_metrics if k.startswith("eval_"))
    assert evals and [free_metrics[k] for k in evals] == pytest.approx([padded_metrics[k] for k in evals],
                                                                       rel=1e-4, abs=1e-5)
    assert free_metrics["tokens"] == padded_metrics["tokens"]  # the same real tokens, none of them pad


def test_padding_free_dpo_with_lora_trains_like_padded(tmp_path, tiny_model_dir):
    data = (tiny_model_dir, write_word_pairs(tmp_path / "pairs.jsonl", count=12))
    runs = run_both(tmp_path, "dpo", data, {**TINY, "beta": 0.5, "reference": "online",
                                            "lora": {"enabled": True, "r": 4, "dropout": 0.0}})
    assert runs[True][1]["reference_adapters_disabled"] == 1.0
    assert_same_run(runs, ["reward_margin", "logps_chosen", "logps_rejected"])


def test_padding_free_rm_trains_like_padded(tmp_path, tiny_model_dir):
    data = (tiny_model_dir, write_word_pairs(tmp_path / "pairs.jsonl", count=12))
    runs = run_both(tmp_path, "rm", data, TINY)
    assert_same_run(runs, ["reward_chosen", "reward_margin"])
