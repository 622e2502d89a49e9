"""A tiny randomly initialised Llama with a real tokenizer: the stand-in for fast tests and
for trying a pipeline config in seconds."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xwin.models.loading import load_tokenizer, save_atomically


def build_tiny_llama(
    out_dir: Path,
    tokenizer_source: str | Path = "smollm2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Save an HF folder (safetensors + tokenizer with its chat template)."""
    tokenizer = load_tokenizer(tokenizer_source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return save_atomically(model.eval(), tokenizer, Path(out_dir))
