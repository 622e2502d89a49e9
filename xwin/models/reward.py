"""The reward model: a language model's body (no LM head) and a scalar value head read at the
last token of context + reply, the end-of-turn token that closes the reply.

On disk: a standard `AutoModelForSequenceClassification` folder (num_labels 1, the value head as
the class's `score` layer, pad_token_id set) with its tokenizer, so transformers, TRL and vLLM
load what the rm stage writes unchanged; `reward_config.json` beside it keeps what the trainer
knows (format version, max_length, held-out reward statistics). `load_reward_model(path)` loads
that folder, any other single-label sequence classifier, and folders of the first format (an
AutoModel body + `value_head.safetensors`).

Pooling. In this process the attention mask decides where the reward is read (the last attended
token). transformers' classifier instead reads the rightmost token that is not the pad id, and
SmolLM2's (and many chat models') pad token is the end-of-turn token itself, which would move
the reward one token early. So the saved folder gets a pad token that is no end-of-turn token
(`reward_pad_token`): then both read the same token and give the same reward. vLLM reads the
last token of each sequence, which is also that token.

The value head has no bias, as in transformers' decoder classifiers, TRL and vLLM. Nothing is
lost: the Bradley-Terry loss sees only reward differences, so a bias never gets a gradient and
the first format's heads (bias initialised at 0) all kept a bias of exactly 0. A first-format
folder whose bias is not 0 (set by hand) still loads with it and scores as before; saving it in
the standard format drops the bias with a warning: every reward then moves by the same constant,
which changes no ranking and no pair margin, only absolute levels (e.g. select's min_score).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from xwin.core.errors import UserError
from xwin.models.device import place_model
from xwin.models.loading import pretrained_kwargs, torch_dtype

log = logging.getLogger(__name__)

REWARD_CONFIG = "reward_config.json"
FORMAT = "xwin-reward-model"
FORMAT_VERSION = 2  # 1: AutoModel body + value_head.safetensors; 2: AutoModelForSequenceClassification
LEGACY_VALUE_HEAD = "value_head.safetensors"


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
            value_head = nn.Linear(hidden, 1, bias=False, dtype=body.dtype)
            nn.init.normal_(value_head.weight, std=1.0 / math.sqrt(hidden + 1))
        self.value_head = value_head

    @property
    def config(self):
        return self.body.config

    @classmethod
    def from_language_model(cls, path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
                            quantize: str = "none") -> RewardModel:
        """A new reward model: the body of an HF causal-LM folder (base or SFT) + a fresh head
        (in the body's compute dtype: a quantized body's parameters are packed integers)."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not an HF model folder (no config.json)")
        body = AutoModel.from_pretrained(path, **pretrained_kwargs(dtype, attn_implementation, quantize))
        if quantize == "none":
            return cls(body)
        hidden = body.config.hidden_size
        head = nn.Linear(hidden, 1, bias=False, dtype=torch_dtype(dtype),
                         device=body.get_input_embeddings().weight.device)
        nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
        return cls(body, head)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.body.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        """What peft calls so that a frozen body's embeddings still pass gradients to adapters
        under reentrant checkpointing."""
        self.body.enable_input_require_grads()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Padded rows [B, T] with their attention mask, or one padding-free row [1, L] of several
        sequences: position ids restarting at 0 for each and `cu_seqlens` [S + 1] (sequence k is
        columns cu_seqlens[k]:cu_seqlens[k+1]); then one reward per sequence [S], read at its last
        token. No mask and no cache there: transformers keeps attention inside each sequence
        only then (xwin.train.pairs)."""
        if cu_seqlens is None:
            if attention_mask is None:
                raise ValueError("RewardModel: padded rows need their attention_mask")
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, last_token_index(attention_mask)]
        else:
            if input_ids.shape[0] != 1 or position_ids is None or attention_mask is not None:
                raise ValueError("RewardModel: a padding-free batch is one row with position_ids and no attention_mask")
            hidden = self.body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            pooled = hidden[0, cu_seqlens[1:] - 1]
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
        (padding never changes a reward); the sequences are reward_sequences'."""
        from xwin.data.dataset import pad_token_id
        from xwin.models.scoring import score_sequences

        sequences = reward_sequences(tokenizer, contexts, replies, max_length)
        was_training = self.training
        self.eval()
        try:
            return score_sequences(self, sequences, batch_size=batch_size, pad_id=pad_token_id(tokenizer),
                                   progress=False)
        finally:
            self.train(was_training)

    def save(self, out_dir: Path, tokenizer: Any, state_dict: dict[str, torch.Tensor] | None = None,
             info: dict[str, Any] | None = None) -> None:
        """Write the standard folder (see the module docstring) into out_dir, an empty folder
        (callers make it atomic). `state_dict` (keys body.* and value_head.*) overrides the
        module's own, e.g. the weights gathered from ZeRO-3 shards. `tokenizer` is not changed:
        the folder's copy gets the pad token."""
        state = state_dict if state_dict is not None else self.state_dict()
        pad_token, pad_id = reward_pad_token(tokenizer)
        classifier, head_name = empty_classifier(self.body.config, pad_id)
        out = classifier_state_dict(state, classifier, head_name)
        classifier.save_pretrained(out_dir, state_dict=out, safe_serialization=True)
        saved_tokenizer = copy.deepcopy(tokenizer)
        saved_tokenizer.pad_token = pad_token
        saved_tokenizer.save_pretrained(out_dir)
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "layout": "AutoModelForSequenceClassification",
            "architecture": type(classifier).__name__,
            "head": head_name,
            "pad_token": pad_token,
            "pooling": "last attended token (the reply's end-of-turn token)",
            **(info or {}),
        }
        (Path(out_dir) / REWARD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def reward_sequences(tokenizer: Any, contexts: Sequence[Sequence[Any]], replies: Sequence[str],
                     max_length: int = 4096) -> list[list[int]]:
    """The token ids evaluation scores for each (context messages, reply). Unlike the score
    stage, which drops a response that cannot fit (it is one of many), a reply too long for
    max_length even with the context cut away is scored on its first tokens: evaluation needs a
    score for every answer."""
    from xwin.data.templating import tokenize_prompt_and_reply

    if len(contexts) != len(replies):
        raise ValueError(f"{len(contexts)} contexts but {len(replies)} replies")
    sequences = []
    for context, reply in zip(contexts, replies):
        sample = tokenize_prompt_and_reply(tokenizer, context, reply, max_length)
        if sample is None:
            sample = tokenize_prompt_and_reply(tokenizer, context, reply, 10**9)
            sample.input_ids = sample.input_ids[:max_length]
        sequences.append(sample.input_ids)
    return sequences


def reward_pad_token(tokenizer: Any) -> tuple[str, int]:
    """(token, id) of the saved folder's pad: the first of the tokenizer's pad, unk, other added
    special tokens and bos that is no end-of-turn token (see the module docstring). The bos
    comes last because it occurs in every sequence, and a pad's embedding gets no gradient when
    another trainer fine-tunes the folder."""
    from xwin.data.templating import end_of_turn_ids

    ends = end_of_turn_ids(tokenizer)
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id]
    candidates += sorted(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    candidates.append(tokenizer.bos_token_id)
    for token_id in candidates:
        if token_id is not None and int(token_id) not in ends:
            return tokenizer.convert_ids_to_tokens(int(token_id)), int(token_id)
    raise UserError(f"tokenizer {tokenizer.name_or_path!r}: every special token ends a turn, so no pad token "
                    "lets transformers find the reply's last token; add a pad token to the tokenizer")


def empty_classifier(body_config: PretrainedConfig, pad_id: int | None = None) -> tuple[PreTrainedModel, str]:
    """The single-label sequence classifier of the body's architecture, on the meta device (no
    memory), with the name of its head: the layout the saved weights must fill."""
    config = copy.deepcopy(body_config)
    config.num_labels = 1
    if pad_id is not None:
        config.pad_token_id = pad_id
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise UserError(f"model type {config.model_type!r} has no AutoModelForSequenceClassification")
    # the class itself, not from_config: that would shard it under a live ZeRO-3 config, and
    # only rank 0 saves
    with torch.device("meta"):
        classifier = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)](config)
    return classifier, _head_name(classifier)


def classifier_state_dict(state: dict[str, torch.Tensor], classifier: PreTrainedModel,
                          head_name: str) -> dict[str, torch.Tensor]:
    """RewardModel weights (body.*, value_head.*) under the classifier's names: the body under
    its base-model prefix, the value head as the classifier's head (a bias it lacks is dropped,
    one it has and we lack is 0)."""
    prefix = classifier.base_model_prefix
    out = {f"{prefix}.{k[len('body.'):]}": v for k, v in state.items() if k.startswith("body.")}
    head = {k[len("value_head."):]: v for k, v in state.items() if k.startswith("value_head.")}
    out[f"{head_name}.weight"] = head["weight"].contiguous()
    bias = head.get("bias")
    if getattr(classifier, head_name).bias is not None:
        out[f"{head_name}.bias"] = bias if bias is not None else torch.zeros(1, dtype=head["weight"].dtype)
    elif bias is not None and bool(torch.any(bias != 0)):
        log.warning("value head bias %s dropped (the standard head has none): every reward moves by %s; "
                    "rankings and pair margins are unchanged", bias.tolist(), (-bias).tolist())
    if set(out) != (expected := set(classifier.state_dict())):
        raise ValueError(f"reward model weights do not fit {type(classifier).__name__}: missing "
                         f"{sorted(expected - set(out))[:5]}, unexpected {sorted(set(out) - expected)[:5]}")
    return out


def _head_name(classifier: PreTrainedModel) -> str:
    heads = [name for name, _ in classifier.named_children() if name != classifier.base_model_prefix]
    head = getattr(classifier, heads[0]) if len(heads) == 1 else None
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise UserError(f"{type(classifier).__name__}: the classifier head is not one linear layer with one "
                        f"output ({', '.join(heads)}); xwin's reward model needs one")
    return heads[0]


def load_reward_model(path: str | Path, dtype: str = "float32",
                      device: str | torch.device | None = None, attn_implementation: str = "sdpa") -> RewardModel:
    """A reward model in eval mode on `device`, by default the device policy's
    (xwin.models.device): a folder the rm stage saved (either format) or any single-label
    AutoModelForSequenceClassification folder."""
    path = Path(path)
    info = {}
    if (config_file := path / REWARD_CONFIG).exists():
        info = json.loads(config_file.read_text())
        if info.get("format") != FORMAT:
            raise UserError(f"{config_file}: format {info.get('format')!r}, expected {FORMAT!r}")
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a reward model folder (no config.json)")
    dtype_ = torch_dtype(dtype)
    if info.get("version", 1) == 1 and info.get("value_head"):
        model = _load_first_format(path, info["value_head"], dtype_, attn_implementation)
    else:
        model = _load_classifier(path, dtype_, attn_implementation)
    return place_model(model.eval(), device)


def _load_classifier(path: Path, dtype: torch.dtype, attn_implementation: str = "sdpa") -> RewardModel:
    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"{path}: not a reward model folder (architectures {architectures}, no {REWARD_CONFIG})")
    classifier = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype,
                                                                    attn_implementation=attn_implementation)
    if classifier.config.num_labels != 1:
        raise UserError(f"{path}: a classifier with {classifier.config.num_labels} labels; a reward model has 1")
    return RewardModel(classifier.base_model, getattr(classifier, _head_name(classifier)))


def _load_first_format(path: Path, head_file: str, dtype: torch.dtype,
                       attn_implementation: str = "sdpa") -> RewardModel:
    """Format 1: an AutoModel body and a value head (with a bias) in its own file."""
    body = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    head_state = {k: v.to(dtype) for k, v in load_file(str(path / head_file)).items()}
    head = nn.Linear(body.config.hidden_size, 1, bias="bias" in head_state, dtype=dtype)
    head.load_state_dict(head_state)
    return RewardModel(body, head)
