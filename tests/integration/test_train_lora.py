"""LoRA through the training stages, from the CLI as the executors run them: SFT on 2 processes
under ZeRO-3 (the adapters' shards gathered), the reward model with its value head trained
whole, and DPO whose reference is the policy with its adapters switched off: one model loaded,
and the same run whether the reference is computed online or precomputed. Every export is a
plain HF folder with the adapters merged in, which transformers loads (and vLLM, in the slow
test) and which computes what base + adapter compute."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from train_support import (
    REPO,
    assert_vllm_samples,
    committed,
    history,
    process_env,
    run_workers,
    write_conversations,
    write_spec,
    write_word_pairs,
)
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from xwin.models.reward import RewardModel, load_reward_model

PROBE = torch.tensor([[5, 9, 14, 30, 31, 32, 40, 41, 7, 8]])
# adapters on a random tiny model learn slowly: a high constant rate (2e-2 already overshoots)
SFT = {"learning_rate": 1e-2, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 128,
       "warmup_steps": 0, "lr_scheduler": "constant", "log_every": 1, "eval_every": 4, "save_every": 0,
       "eval_fraction": 0.1, "seed": 7}
DPO = {"learning_rate": 1e-2, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 128,
       "warmup_steps": 0, "lr_scheduler": "constant", "log_every": 1, "eval_every": 0, "save_every": 0,
       "eval_fraction": 0.0, "beta": 0.5, "seed": 11, "zero_stage": 0}
LORA = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0}
ADAPTER_PARAMETERS_R8 = 16384  # r x (in + out) over the tiny Llama's 14 linear layers (test_lora.py)


def weight_names(folder) -> set[str]:
    names = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            names |= set(f.keys())
    return names


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(PROBE).logits


def test_lora_sft_on_two_processes_under_zero3_exports_merged_weights_and_the_adapter(tmp_path, tiny_model_dir):
    from peft import PeftModel

    data = write_conversations(tmp_path / "conversations.jsonl", count=48)
    spec = write_spec(tmp_path, "sft", {"model": tiny_model_dir, "train": data},
                      {**SFT, "max_steps": 8, "zero_stage": 3, "batching": "packed",
                       "lora": {**LORA, "keep_adapter": True}})
    run_workers("sft", spec)
    folder, metrics = committed(tmp_path, "runs/t/sft")
    steps = history(folder)
    assert (steps[-1]["loss"] + steps[-2]["loss"]) / 2 < (steps[0]["loss"] + steps[1]["loss"]) / 2 - 0.15
    assert steps[-1]["eval_loss"] < steps[3]["eval_loss"]
    assert metrics["lora_trainable_parameters"] == ADAPTER_PARAMETERS_R8
    assert metrics["lora_trainable_fraction"] < 0.01

    # a plain folder: the base's weight names, no adapter in it
    assert not any("lora" in name or "base_layer" in name for name in weight_names(folder))
    merged = AutoModelForCausalLM.from_pretrained(folder)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert set(merged.state_dict()) == set(start.state_dict())
    assert merged.config.use_cache and merged.config.tie_word_embeddings
    trained, base = merged.state_dict(), start.state_dict()
    assert torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # frozen
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # the adapter merged in

    # the kept adapter on the base computes what the merged folder computes
    adapter_dir = folder / "adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 8
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    assert (logits(with_adapter) - logits(start)).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(logits(with_adapter), logits(merged), atol=1e-4)


def test_lora_reward_model_trains_its_head_whole_and_saves_a_standard_classifier(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=48)
    spec = write_spec(tmp_path, "rm", {"model": tiny_model_dir, "train": data},
                      {"learning_rate": 1e-2, "max_steps": 10, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                       "max_length": 128, "zero_stage": 0, "warmup_steps": 1, "log_every": 1, "eval_every": 0,
                       "save_every": 0, "eval_fraction": 0.25, "seed": 3, "lora": LORA})
    run_workers("rm", spec, nproc=1)
    folder, metrics = committed(tmp_path, "runs/t/rm")
    steps = history(folder)
    assert sum(r["loss"] for r in steps[-3:]) < sum(r["loss"] for r in steps[:3])
    hidden = 64
    assert metrics["lora_trainable_parameters"] == ADAPTER_PARAMETERS_R8 + hidden  # adapters + the head

    classifier = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert classifier.config.num_labels == 1
    torch.manual_seed(3)  # the stage's seed: the head the run started from
    fresh = RewardModel.from_language_model(tiny_model_dir)
    assert not torch.equal(classifier.score.weight, fresh.value_head.weight)  # the head trained
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    body = classifier.model.state_dict()
    assert torch.equal(body["embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert not torch.equal(body["layers.1.mlp.down_proj.weight"], start["model.layers.1.mlp.down_proj.weight"])

    ids = PROBE.repeat(2, 1)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = classifier(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        ours = load_reward_model(folder)(input_ids=ids, attention_mask=mask)
    assert torch.allclose(plain, ours, atol=1e-5)


# Runs `xwin stage dpo` in a fresh process that counts the causal LMs it loads (from_pretrained
# calls), and how many had been loaded when training ended.
COUNTING_STAGE = """
import json, sys
from transformers import AutoModelForCausalLM
import xwin.train.dpo as dpo
from xwin.cli import stage_main

loads, ended = [], []
original, real_train = AutoModelForCausalLM.from_pretrained.__func__, dpo.train

def counting(cls, *args, **kwargs):
    loads.append(str(args[0]))
    return original(cls, *args, **kwargs)

def train(*args, **kwargs):
    result = real_train(*args, **kwargs)
    ended.append(len(loads))
    return result

AutoModelForCausalLM.from_pretrained = classmethod(counting)
dpo.train = train
code = stage_main("dpo", sys.argv[1])
print(json.dumps({"code": code, "loads": len(loads), "during_training": ended}))
"""


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_dpo_online_reference_with_lora_loads_one_model(tmp_path, tiny_model_dir, lora):
    """Full DPO's online reference is a second copy of the model; with LoRA it is the policy with
    its adapters off, so training loads one (the LoRA export reads the base once more)."""
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=8)
    config = {**DPO, "max_steps": 1, "reference": "online", **({"lora": LORA} if lora else {})}
    spec = write_spec(tmp_path, "dpo", {"model": tiny_model_dir, "train": data}, config)
    done = subprocess.run([sys.executable, "-c", COUNTING_STAGE, str(spec)], env=process_env({}), cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    counted = json.loads(done.stdout.strip().splitlines()[-1])
    assert counted["code"] == 0
    assert counted["during_training"] == [1 if lora else 2]
    assert counted["loads"] == 2  # lora: the export reads the base again; full: the policy and its frozen copy
    _, metrics = committed(tmp_path, "runs/t/dpo")
    assert metrics["reference_adapters_disabled"] == float(lora)


def test_lora_dpo_trains_and_precomputed_and_online_references_agree(tmp_path, tiny_model_dir):
    data = write_word_pairs(tmp_path / "pairs.jsonl", count=12)
    losses = {}
    for reference in ("precompute", "online"):
        spec = write_spec(tmp_path, "dpo", {"model": tiny_model_dir, "train": data},
                          {**DPO, "max_steps": 9, "reference": reference, "lora": {**LORA, "keep_adapter": True}},
                          run_id=reference)
        run_workers("dpo", spec, nproc=1)
        folder, metrics = committed(tmp_path, f"runs/{reference}/dpo")
        steps = history(folder)
        losses[reference] = [r["loss"] for r in steps]
        assert metrics["reference_adapters_disabled"] == 1.0
        assert metrics["lora_trainable_parameters"] == ADAPTER_PARAMETERS_R8
    first = losses["online"]
    assert first[0] == pytest.approx(math.log(2), abs=1e-4)  # adapters start at zero: policy == reference
    # 3 micro-batches an epoch: the last epoch against the first, over the same pairs
    assert sum(first[-3:]) / 3 < sum(first[:3]) / 3 - 0.1
    assert losses["precompute"] == pytest.approx(first, abs=1e-4)

    from peft import PeftModel

    folder, _ = committed(tmp_path, "runs/online/dpo")
    merged = AutoModelForCausalLM.from_pretrained(folder)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                             folder / "adapter")
    assert torch.allclose(logits(with_adapter), logits(merged), atol=1e-4)


@pytest.mark.slow
def test_lora_sft_of_smollm2_merged_export_serves_in_vllm(tmp_path, smollm2_dir):
    data = write_conversations(tmp_path / "conversations.jsonl", count=16)
    spec = write_spec(tmp_path, "sft", {"model": smollm2_dir, "train": data},
                      {"learning_rate": 1e-4, "max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                       "max_length": 128, "zero_stage": 0, "log_every": 1, "eval_every": 0, "save_every": 0,
                       "eval_fraction": 0.0, "warmup_steps": 0, "lora": {"enabled": True, "r": 8}})
    run_workers("sft", spec, nproc=1)
    folder, metrics = committed(tmp_path, "runs/t/sft")
    assert 0 < metrics["lora_trainable_fraction"] < 0.05
    assert not any("lora" in name for name in weight_names(folder))

    assert_vllm_samples(tmp_path, folder)
