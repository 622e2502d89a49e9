"""The reward-model stage from the CLI: trains on 2 processes and saves a model the scoring stage
and transformers' own classifier load to the same rewards; on a task whose preferred reply is
knowable it beats chance on held-out pairs."""

from __future__ import annotations

import json

import torch
from train_support import assert_hub_artifact, committed, history, run_workers, write_spec, write_word_pairs
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xwin.data.dataset import pad_right
from xwin.data.templating import tokenize_prompt_and_reply
from xwin.models.loading import load_tokenizer
from xwin.models.reward import REWARD_CONFIG, load_reward_model


def test_rm_on_two_processes_trains_and_saves_a_loadable_reward_model(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=48)
    config = {"learning_rate": 3e-3, "max_steps": 8, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
              "max_length": 128, "zero_stage": 1, "warmup_steps": 1, "log_every": 1, "eval_every": 4,
              "save_every": 0, "eval_fraction": 0.25, "seed": 3}
    spec = write_spec(tmp_path, "rm", {"model": tiny_model_dir, "train": data}, config)
    run_workers("rm", spec)
    folder, metrics = committed(tmp_path, "runs/t/rm")
    steps = history(folder)
    first, last = steps[:3], steps[-3:]
    assert sum(r["loss"] for r in last) < sum(r["loss"] for r in first)
    assert {"accuracy", "reward_chosen", "reward_rejected", "reward_margin"} <= set(steps[0])
    for key in ("eval_accuracy", "eval_reward_mean", "eval_reward_std", "eval_chosen_reward_mean",
                "eval_rejected_reward_mean"):
        assert key in metrics
    assert metrics["eval_pairs"] == 12 and metrics["world_size"] == 2
    assert json.loads((folder / REWARD_CONFIG).read_text())["max_length"] == 128
    assert_hub_artifact(folder, "rm", config, metrics, "text-classification")
    assert f"| eval_accuracy | {metrics['eval_accuracy']:.6g} |" in (folder / "README.md").read_text()

    model = load_reward_model(folder)
    contexts, replies = [[{"role": "user", "content": "Say the word tiger."}]] * 2, ["tiger", "piano"]
    rewards = model.score(load_tokenizer(folder), contexts, replies)
    assert len(rewards) == 2 and rewards[0] != rewards[1]

    # the folder is a standard classifier: transformers alone gives the same rewards
    classifier = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sequences = [tokenize_prompt_and_reply(tokenizer, c, r, 128).input_ids for c, r in zip(contexts, replies)]
    with torch.no_grad():
        plain = classifier(input_ids=pad_right(sequences, tokenizer.pad_token_id),
                           attention_mask=pad_right([[1] * len(s) for s in sequences], 0)).logits.squeeze(-1)
    assert max(abs(a - b) for a, b in zip(plain.tolist(), rewards)) < 1e-5


def test_rm_beats_chance_on_held_out_pairs_of_a_knowable_task(tmp_path, tiny_model_dir):
    """Chosen says the word the user asked for, rejected another word; 80 held-out pairs, so
    0.65 accuracy is far outside what a coin would score (p < 0.01)."""
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=400, multi_turn_every=0)
    spec = write_spec(tmp_path, "rm", {"model": tiny_model_dir, "train": data},
                      {"learning_rate": 3e-3, "max_steps": 150, "micro_batch_size": 8, "gradient_accumulation_steps": 1,
                           "max_length": 128, "zero_stage": 0, "gradient_checkpointing": False, "warmup_steps": 10,
                           "log_every": 10, "eval_every": 0, "save_every": 0, "eval_fraction": 0.2, "seed": 42})
    run_workers("rm", spec, nproc=1)
    _, metrics = committed(tmp_path, "runs/t/rm")
    assert metrics["eval_pairs"] == 80
    assert metrics["eval_accuracy"] >= 0.65, metrics
    assert metrics["eval_reward_margin_mean"] > 0


def test_a_bad_pair_fails_permanently_naming_file_line_and_field(tmp_path, tiny_model_dir, capsys):
    from xwin.cli import stage_main as main
    from xwin.core.errors import EXIT_USER_ERROR

    data = write_word_pairs(tmp_path / "pairs.jsonl", count=4)
    with open(data, "a") as f:
        bad = {"context": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}
        f.write(json.dumps(bad) + "\n")
    spec = write_spec(tmp_path, "rm", {"model": tiny_model_dir, "train": data}, {"max_steps": 1, "zero_stage": 0})
    assert main("rm", spec) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"{data}:5" in err and "context" in err
