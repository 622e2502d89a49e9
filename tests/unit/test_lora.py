"""LoRA / QLoRA on the tiny model, in process: the config's rules, which parameters train and how
many (counted from the model's shapes, not asked of peft), that the wrapped model starts as the
base and that switching the adapters off gives the base back (DPO's reference), the reward
model's head trained whole, and the attention kernel reaching the model."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from xwin.config import load_config
from xwin.controller.graph import make_plan
from xwin.core.errors import ConfigError, UserError
from xwin.models.loading import check_attn_implementation, load_causal_lm
from xwin.models.reward import RewardModel
from xwin.train.config import LoraSettings, TrainConfig
from xwin.train.dpo_config import DpoConfig
from xwin.train.lora import base_weights, lora_metrics, trainable_model, with_lora
from xwin.train.sft_config import SftConfig

CUDA = torch.cuda.is_available()
BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
INPUT = torch.tensor([[5, 9, 14, 30, 31, 32, 40, 41]])


def adapter_parameters(config, r: int) -> int:
    """r x (in + out) for each linear layer of a Llama block but the LM head: what 'all-linear'
    adapts (q, k, v, o, gate, up, down)."""
    hidden, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    q = config.num_attention_heads * config.head_dim
    per_layer = (hidden + q) + 2 * (hidden + kv) + (q + hidden) + 2 * (hidden + inner) + (inner + hidden)
    return r * per_layer * config.num_hidden_layers


@pytest.fixture
def base(tiny_model_dir):
    return load_causal_lm(tiny_model_dir).eval()


# ---- config


def test_lora_is_off_by_default_and_its_defaults_are_peft_s_usual_ones():
    config = SftConfig()
    assert not config.lora.enabled and config.lora.target_modules == "all-linear"
    assert (config.lora.r, config.lora.alpha, config.lora.quantize) == (16, 32.0, "none")
    assert config.attn_implementation == "sdpa"


def test_qlora_needs_lora_enabled_and_refuses_zero_3():
    with pytest.raises(ValidationError, match="needs lora.enabled"):
        TrainConfig(zero_stage=0, lora={"quantize": "4bit"})
    with pytest.raises(ValidationError, match="zero_stage 3"):
        TrainConfig(zero_stage=3, lora={"enabled": True, "quantize": "4bit"})
    assert TrainConfig(zero_stage=2, lora={"enabled": True, "quantize": "8bit"}).lora.quantize == "8bit"


def test_an_unknown_lora_field_or_kernel_is_a_config_error_naming_the_field(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("sft:\n  lora:\n    rank: 8\n")
    with pytest.raises(ConfigError, match=r"sft\.lora\.rank"):
        load_config(path)
    path.write_text("dpo:\n  attn_implementation: flash\n")
    with pytest.raises(ConfigError, match=r"dpo\.attn_implementation"):
        load_config(path)


@pytest.mark.skipif(CUDA and BITSANDBYTES, reason="this machine can run QLoRA")
def test_qlora_without_cuda_or_bitsandbytes_fails_the_plan_naming_stage_and_field(tmp_path):
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store

    config = load_config(None, ["sft.zero_stage=0", "sft.lora.enabled=true", "sft.lora.quantize=4bit"])
    problems = config.sft.hardware_problems()
    assert len(problems) == 1 and problems[0].startswith("lora.quantize: 4bit needs")
    with pytest.raises(ConfigError, match=r"sft\.lora\.quantize: 4bit needs (a CUDA GPU|the bitsandbytes)"):
        make_plan(config, open_store(StoreConfig(root=tmp_path / "store")))
    # on a cluster the pod is another machine: the plan goes through, the pod checks for itself
    config = load_config(None, ["sft.zero_stage=0", "sft.lora.enabled=true", "sft.lora.quantize=4bit",
                                "executor.kind=kubernetes"])
    assert make_plan(config, open_store(StoreConfig(root=tmp_path / "store"))).stages["sft"].decision == "run"


@pytest.mark.skipif(CUDA and BITSANDBYTES, reason="this machine can run QLoRA")
def test_qlora_here_exits_2_from_the_run_command_and_from_the_stage_itself(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from xwin.cli import app

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"run:\n  workdir: {tmp_path / 'work'}\nstore:\n  root: {tmp_path / 'store'}\n"
                        "rm:\n  zero_stage: 1\n  lora: {enabled: true, quantize: 8bit}\n")
    result = CliRunner().invoke(app, ["run", str(pipeline), "--dry-run"])
    assert result.exit_code == 2 and "rm.lora.quantize: 8bit needs" in result.stderr
    # `xwin stage` run by hand (or in a pod) checks before it reads any weight
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"stage: dpo\nrun_id: t\noutput: runs/t/dpo\nworkdir: {tmp_path / 'w'}\n"
                    f"store: {{kind: local, root: {tmp_path / 'store'}}}\n"
                    f"inputs: {{model: {tiny_model_dir}, train: {tmp_path / 'none.jsonl'}}}\n"
                    "config: {zero_stage: 0, lora: {enabled: true, quantize: 4bit}}\n")
    result = CliRunner().invoke(app, ["stage", "dpo", "--config", str(spec)])
    assert result.exit_code == 2 and "stage dpo: lora.quantize: 4bit needs" in result.stderr


@pytest.mark.skipif(CUDA and importlib.util.find_spec("flash_attn") is not None, reason="flash-attn runs here")
def test_flash_attention_is_refused_where_it_cannot_run(tiny_model_dir):
    with pytest.raises(UserError, match="flash_attention_2 needs"):
        check_attn_implementation("flash_attention_2")
    with pytest.raises(UserError, match="flash_attention_2 needs"):
        load_causal_lm(tiny_model_dir, attn_implementation="flash_attention_2")
    assert DpoConfig(attn_implementation="flash_attention_2").hardware_problems()


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_the_attention_kernel_reaches_the_model_and_both_compute_the_same(tiny_model_dir, kernel):
    model = load_causal_lm(tiny_model_dir, attn_implementation=kernel).eval()
    assert model.config._attn_implementation == kernel
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.allclose(model(INPUT).logits, reference(INPUT).logits, atol=1e-5)


# ---- wrapping


def test_only_the_adapters_train_and_their_count_is_r_times_in_plus_out(base):
    total = sum(p.numel() for p in base.parameters())
    model = with_lora(base, LoraSettings(enabled=True, r=8), gradient_checkpointing=False)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(trainable.values()) == adapter_parameters(base.config, 8) == 16384
    metrics = lora_metrics(model)
    assert metrics["lora_trainable_parameters"] == 16384 == model.get_nb_trainable_parameters()[0]
    assert metrics["lora_total_parameters"] == total + 16384
    assert metrics["lora_trainable_fraction"] < 0.01
    assert not any("lm_head" in n or "embed" in n for n in trainable)  # 'all-linear' spares the head


def test_named_target_modules_adapt_only_those(base):
    model = with_lora(base, LoraSettings(enabled=True, r=4, target_modules=["q_proj", "v_proj"]),
                      gradient_checkpointing=False)
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "v_proj"}


def test_a_disabled_lora_config_leaves_the_model_as_it_is(base):
    assert trainable_model(base, SftConfig()) is base
    assert lora_metrics(base) == {}


def test_the_wrapped_model_starts_as_the_base_and_disabling_adapters_gives_the_base_back(base, tiny_model_dir):
    with torch.no_grad():
        expected = base(INPUT).logits.clone()
    model = with_lora(base, LoraSettings(enabled=True, r=8, dropout=0.0), gradient_checkpointing=False).eval()
    with torch.no_grad():
        assert torch.equal(model(INPUT).logits, expected)  # lora_B starts at zero
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)  # what training does
        trained = model(INPUT).logits
        with base_weights(model):
            reference = model(INPUT).logits
        after = model(INPUT).logits
    assert (trained - expected).abs().max() > 1e-3
    assert torch.allclose(reference, expected, atol=1e-6)  # the base alone, no second model
    assert torch.equal(after, trained)  # and the adapters are back on after the block


def test_gradient_checkpointing_still_reaches_the_adapters(base):
    model = with_lora(base, LoraSettings(enabled=True, r=4), gradient_checkpointing=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    model(INPUT, labels=INPUT).loss.backward()
    # lora_B starts at zero, so lora_A's first gradient is zero too; lora_B's is not
    grads = [p.grad for n, p in model.named_parameters() if ".lora_B." in n]
    assert len(grads) == 14 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_reward_model_trains_adapters_in_its_body_and_its_whole_value_head(tiny_model_dir):
    torch.manual_seed(0)
    rm = RewardModel.from_language_model(tiny_model_dir)
    config = TrainConfig(lora={"enabled": True, "r": 4}, gradient_checkpointing=False)
    model = trainable_model(rm, config, fully_trained=["value_head"])
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    heads = {n: c for n, c in trainable.items() if "value_head" in n}
    assert list(heads.values()) == [rm.config.hidden_size]  # the head's copy, whole; no adapter on it
    assert ".modules_to_save." in next(iter(heads))
    assert sum(trainable.values()) == adapter_parameters(rm.config, 4) + rm.config.hidden_size
    ids = INPUT.repeat(2, 1)
    rewards = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert rewards.shape == (2,)
    rewards.sum().backward()
    assert all(model.get_parameter(n).grad is not None for n in trainable)


@pytest.mark.skipif(not (CUDA and BITSANDBYTES), reason="QLoRA needs CUDA and bitsandbytes")
def test_qlora_loads_the_base_in_4bit_and_trains_only_the_adapters(tiny_model_dir):
    base = load_causal_lm(tiny_model_dir, "bfloat16", quantize="4bit")
    assert getattr(base, "is_loaded_in_4bit", False)
    model = with_lora(base, LoraSettings(enabled=True, r=8, quantize="4bit"), gradient_checkpointing=True)
    model.train()
    ids = INPUT.to(base.device)
    model(ids, labels=ids).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == adapter_parameters(base.config, 8)
    assert all(p.grad is not None for p in trainable)
