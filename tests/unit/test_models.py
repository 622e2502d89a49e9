import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from xwin.core.errors import UserError
from xwin.models.loading import load_causal_lm, resolve_gguf


def test_tiny_model_loads_with_transformers_and_has_the_chat_template(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text


def test_unknown_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a .gguf file"):
        resolve_gguf(tmp_path / "model.bin")
    with pytest.raises(UserError, match="not an HF model folder"):
        load_causal_lm(tmp_path)


@pytest.mark.slow
def test_imported_smollm2_answers_like_the_gguf_and_saves_plain_safetensors(smollm2_dir, tmp_path):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (smollm2_dir / "model.safetensors").exists()
    model = load_causal_lm(smollm2_dir)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_import_gguf_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from xwin.cli import app

    result = CliRunner().invoke(app, ["model", "import-gguf", "smollm2", str(tmp_path / "m"), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
