"""The reward model: a language model's body (no LM head) and a scalar value head read at the
last token of context + reply, the end-of-turn token that closes the reply.

On disk: the body as a plain HF folder (transformers' AutoModel loads it), the tokenizer, and
`value_head.safetensors` + `reward_config.json` beside them. The scoring stage uses
`load_reward_model(path).score(...)` or `.forward(input_ids, attention_mask)`.

Why not AutoModelForSequenceClassification: it finds the last token by looking for the pad id,
and SmolLM2's (and many chat models') pad token is the end-of-turn token itself, so the reward
would be read one token early. Here the attention mask decides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from xwin.core.errors import UserError
from xwin.models.device import place_model
from xwin.models.loading import torch_dtype

REWARD_CONFIG = "reward_config.json"
VALUE_HEAD = "value_head.safetensors"
FORMAT = "xwin-reward-model"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each row [B]; right or left padding alike (with right
    padding this is attention_mask.sum(-1) - 1)."""
    width = attention_mask.shape[-1]
    return width - 1 - attention_mask.flip(-1).int().argmax(-1)


class RewardModel(nn.Module):
    """forward(input_ids, attention_mask) -> one float32 reward per sequence [B]."""

    def __init__(self, body: nn.Module, value_head: nn.Linear | None = None):
        super().__init__()
        self.body = body
        hidden = body.config.hidden_size
        if value_head is None:
            # small random init (as OpenRLHF/InstructGPT heads): rewards start near 0 and the
            # body still gets gradient at step one (a zero head would block it)
            value_head = nn.Linear(hidden, 1, bias=True, dtype=body.dtype)
            nn.init.normal_(value_head.weight, std=1.0 / math.sqrt(hidden + 1))
            nn.init.zeros_(value_head.bias)
        self.value_head = value_head

    @property
    def config(self):
        return self.body.config

    @classmethod
    def from_language_model(cls, path: str | Path, dtype: str = "float32") -> RewardModel:
        """A new reward model: the body of an HF causal-LM folder (base or SFT) + a fresh head."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not an HF model folder (no config.json)")
        return cls(AutoModel.from_pretrained(path, dtype=torch_dtype(dtype)))

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.body.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]
        return self.value_head(pooled).squeeze(-1).float()

    def score(
        self,
        tokenizer: Any,
        contexts: Sequence[Sequence[Any]],
        replies: Sequence[str],
        batch_size: int = 8,
        max_length: int = 4096,
    ) -> list[float]:
        """Rewards of (context messages, reply) pairs, in input order, batched by length
        (padding never changes a reward). Unlike the score stage, which drops a response that
        cannot fit (it is one of many), a reply too long for max_length even with the context cut
        away is scored on its first tokens: evaluation needs a score for every answer."""
        from xwin.data.dataset import pad_token_id
        from xwin.data.templating import tokenize_prompt_and_reply
        from xwin.models.scoring import score_sequences

        if len(contexts) != len(replies):
            raise ValueError(f"{len(contexts)} contexts but {len(replies)} replies")
        sequences = []
        for context, reply in zip(contexts, replies):
            sample = tokenize_prompt_and_reply(tokenizer, context, reply, max_length)
            if sample is None:
                sample = tokenize_prompt_and_reply(tokenizer, context, reply, 10**9)
                sample.input_ids = sample.input_ids[:max_length]
            sequences.append(sample.input_ids)
        was_training = self.training
        self.eval()
        try:
            return score_sequences(self, sequences, batch_size=batch_size, pad_id=pad_token_id(tokenizer),
                                   progress=False)
        finally:
            self.train(was_training)

    def save(self, out_dir: Path, tokenizer: Any, state_dict: dict[str, torch.Tensor] | None = None,
             info: dict[str, Any] | None = None) -> None:
        """Write body + tokenizer + head into out_dir (an empty folder; callers make it atomic).
        `state_dict` (keys body.* and value_head.*) overrides the module's own, e.g. the weights
        gathered from ZeRO-3 shards."""
        state = state_dict if state_dict is not None else self.state_dict()
        body_state = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
        head_state = {k[len("value_head."):]: v.contiguous() for k, v in state.items() if k.startswith("value_head.")}
        self.body.save_pretrained(out_dir, state_dict=body_state, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        save_file(head_state, str(Path(out_dir) / VALUE_HEAD))
        config = {
            "format": FORMAT,
            "version": 1,
            "value_head": VALUE_HEAD,
            "hidden_size": self.body.config.hidden_size,
            "pooling": "last attended token (the reply's end-of-turn token)",
            **(info or {}),
        }
        (Path(out_dir) / REWARD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_reward_model(path: str | Path, dtype: str = "float32",
                      device: str | torch.device | None = None) -> RewardModel:
    """A reward model saved by the rm stage, in eval mode on `device`, by default the device
    policy's (xwin.models.device)."""
    path = Path(path)
    config_file = path / REWARD_CONFIG
    if not config_file.exists():
        raise UserError(f"{path}: not a reward model folder (no {REWARD_CONFIG})")
    info = json.loads(config_file.read_text())
    if info.get("format") != FORMAT:
        raise UserError(f"{config_file}: format {info.get('format')!r}, expected {FORMAT!r}")
    dtype_ = torch_dtype(dtype)
    body = AutoModel.from_pretrained(path, dtype=dtype_)
    head = nn.Linear(body.config.hidden_size, 1, bias=True, dtype=dtype_)
    head.load_state_dict({k: v.to(dtype_) for k, v in load_file(str(path / info["value_head"])).items()})
    model = RewardModel(body, head).eval()
    return place_model(model, device)
