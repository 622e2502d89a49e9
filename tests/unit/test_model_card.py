"""Model cards: the front matter the Hub reads, a body that says how the model was made, the base
model carried along the pipeline, and the loader files every folder needs."""

from __future__ import annotations

import json
import shutil

from huggingface_hub import metadata_load

from xwin.models.card import (
    CARD_FILE,
    base_model_of,
    has_chat_template,
    is_repo_id,
    model_card,
    write_hub_files,
)


def test_front_matter_is_what_the_hub_reads(tmp_path):
    card = model_card(stage="dpo", kind="causal_lm", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                      started_from="runs/r/rs", run="r", data={"train": 90, "eval": 10},
                      hyperparameters={"learning_rate": 5e-7, "beta": 0.1}, metrics={"eval_loss": 0.61234567})
    card.save(tmp_path / CARD_FILE)
    meta = metadata_load(tmp_path / CARD_FILE)
    assert meta == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "transformers",
                    "pipeline_tag": "text-generation", "tags": ["xwin", "dpo"]}
    body = (tmp_path / CARD_FILE).read_text()
    for row in ("| train | 90 |", "| eval | 10 |", "| learning_rate | 5e-07 |", "| beta | 0.1 |",
                "| eval_loss | 0.612346 |", "started from: `runs/r/rs`", "pipeline run: `r`"):
        assert row in body


def test_a_local_base_model_is_named_in_the_body_but_not_as_a_hub_id(tmp_path):
    card = model_card(stage="rm", kind="reward_model", base_model=str(tmp_path), metrics={})
    card.save(tmp_path / CARD_FILE)
    meta = metadata_load(tmp_path / CARD_FILE)
    assert "base_model" not in meta
    assert meta["pipeline_tag"] == "text-classification" and meta["tags"] == ["xwin", "rm", "reward-model"]
    assert f"base model: `{tmp_path}`" in (tmp_path / CARD_FILE).read_text()
    assert not is_repo_id("runs/r/prepare#base_model") and is_repo_id("meta-llama/Llama-2-7b-hf")


def test_base_model_is_carried_from_the_input_folder_card(tmp_path):
    upstream = tmp_path / "sft"
    upstream.mkdir()
    model_card(stage="sft", kind="causal_lm", base_model="org/base").save(upstream / CARD_FILE)
    assert base_model_of(upstream, "fallback") == "org/base"
    # a card that is not ours (a Hub model's own) names no base of the folder itself
    other = tmp_path / "other"
    other.mkdir()
    (other / CARD_FILE).write_text("---\nbase_model: org/grandparent\nlicense: mit\n---\n# Other\n")
    assert base_model_of(other, "fallback") == "fallback"
    snapshot = tmp_path / "hub" / "models--meta-llama--Llama-2-7b-hf" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert base_model_of(snapshot, "fallback") == "meta-llama/Llama-2-7b-hf"


def test_hub_files_are_written_beside_the_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "generation_config.json").unlink()
    write_hub_files(folder, model_card(stage="sft", kind="causal_lm", base_model="org/base"))
    assert metadata_load(folder / CARD_FILE)["base_model"] == "org/base"
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == json.loads((folder / "config.json").read_text())["eos_token_id"]
    assert has_chat_template(folder)
    (folder / "chat_template.jinja").unlink()
    assert not has_chat_template(folder)
