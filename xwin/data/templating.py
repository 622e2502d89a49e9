"""Chat templating with the tokenizer's own chat template, and the masks that say which tokens
are trained (SFT/RS: every assistant turn) or scored (RM/DPO: the reply).

How the masks are found: the template renders `messages[:i]` plus the generation prompt, and
`messages[:i+1]`; the characters between the two renderings are assistant turn i (its content,
end-of-turn marker and any template whitespace). The whole conversation is tokenized once with
character offsets, and a token is trained when it starts inside such a span, up to and including
the span's last end-of-turn token (`<|im_end|>` for ChatML): the newline a template prints after
that marker is formatting, not something the model should learn to emit. System and user turns,
a default system prompt the template inserts (SmolLM2's does) and the `<|im_start|>assistant\\n`
header stay masked. This needs a prefix-stable template (rendering more messages only appends
text); one that rewrites earlier turns raises TemplateError instead of silently mis-masking.
(`return_assistant_tokens_mask` would need `{% generation %}` tags, which most templates, SmolLM2's
included, do not have.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xwin.core.errors import UserError
from xwin.data.schemas import Message

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy (and HF models) skip

# Turn-closing tokens of common chat formats; the tokenizer's eos token is always one too.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|eot|>")


class TemplateError(UserError):
    """The tokenizer's chat template cannot be used for masked training."""


MessageLike = Message | Mapping[str, Any]


def as_dicts(messages: Sequence[MessageLike]) -> list[dict[str, str]]:
    """Message records or plain dicts -> the `[{"role", "content"}]` that templates take."""
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append({"role": m.role, "content": m.content})
        else:
            out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out


def render(
    tokenizer: Any, messages: Sequence[MessageLike], *, add_generation_prompt: bool = False
) -> str:
    """The chat template's text for `messages` (special tokens as text, not yet tokenized)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    return tokenizer.apply_chat_template(
        as_dicts(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_prompt(tokenizer: Any, messages: Sequence[MessageLike]) -> str:
    """A context ready for the model to answer: the template plus its generation prompt."""
    return render(tokenizer, messages, add_generation_prompt=True)


def end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    """Token ids that close an assistant turn: eos plus known markers that are added tokens
    (added tokens only: the full vocabulary is slow to fetch and markers are always added)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_added_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            ids.add(int(vocab[token]))
    return frozenset(ids)


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    """Token ids and each token's start offset (characters) for each text; one batched call, so
    the Rust tokenizer spreads the work over all cores. Special tokens are spelled out by the
    template, so the tokenizer must not add its own (no double BOS)."""
    try:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as e:
        raise TemplateError(
            f"tokenizer {tokenizer.name_or_path!r} gives no character offsets; a fast (Rust) "
            "tokenizer is needed for loss masks"
        ) from e
    return [
        (list(ids), [int(start) for start, _ in offsets])
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    return _encode_batch(tokenizer, [text])[0]


def assistant_char_spans(
    tokenizer: Any, messages: Sequence[MessageLike]
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and, for each assistant message, its (start, end) characters in it."""
    msgs = as_dicts(messages)
    full = render(tokenizer, msgs)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, msgs[:i], add_generation_prompt=True)
        upto = render(tokenizer, msgs[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TemplateError(
                f"chat template of {tokenizer.name_or_path!r} is not prefix-stable at message {i}: "
                "rendering the conversation up to a turn is not a prefix of rendering it further, "
                "so assistant tokens cannot be located (use a template that only appends)"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def _span_tokens(
    starts: list[int], ids: list[int], span: tuple[int, int], eot: frozenset[int]
) -> tuple[int, int]:
    """Token range [first, end) trained for a character span: tokens starting inside it, cut
    after the last end-of-turn token (a token straddling the span's start holds header text, so
    it stays masked)."""
    first = bisect_left(starts, span[0])
    stop = bisect_left(starts, span[1])
    for k in range(stop - 1, first - 1, -1):
        if ids[k] in eot:
            return first, k + 1
    return first, stop


@dataclass
class TokenizedSample:
    """One SFT example: labels equal input_ids on trained tokens and IGNORE_INDEX elsewhere."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_conversations(
    tokenizer: Any, conversations: Sequence[Sequence[MessageLike]], max_length: int
) -> list[TokenizedSample | None]:
    """Tokenize conversations with every assistant turn trained and everything else masked.

    Longer than `max_length`: the start is kept and the end cut (a partly cut assistant turn keeps
    its first tokens). None for a conversation with no trained token left within `max_length`."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    rendered = [assistant_char_spans(tokenizer, messages) for messages in conversations]
    encoded = _encode_batch(tokenizer, [text for text, _ in rendered]) if rendered else []
    eot = end_of_turn_ids(tokenizer)
    samples: list[TokenizedSample | None] = []
    for (_, spans), (ids, starts) in zip(rendered, encoded, strict=True):
        labels = [IGNORE_INDEX] * len(ids)
        for span in spans:
            first, end = _span_tokens(starts, ids, span, eot)
            labels[first:end] = ids[first:end]
        if spans and all(label == IGNORE_INDEX for label in labels):
            raise TemplateError(
                f"chat template of {tokenizer.name_or_path!r} renders no assistant tokens"
            )
        sample = TokenizedSample(ids[:max_length], labels[:max_length], len(ids) > max_length)
        samples.append(sample if sample.num_trained > 0 else None)
    return samples


def tokenize_conversation(
    tokenizer: Any, messages: Sequence[MessageLike], max_length: int
) -> TokenizedSample | None:
    """One conversation; see `tokenize_conversations`."""
    return tokenize_conversations(tokenizer, [messages], max_length)[0]


def tokenize_prompt(tokenizer: Any, messages: Sequence[MessageLike]) -> list[int]:
    """Token ids of a context plus the generation prompt (what sampling and scoring feed in)."""
    return _encode(tokenizer, render_prompt(tokenizer, messages))[0]


@dataclass
class PromptReplySample:
    """A context and one reply, for log-probs (DPO) and rewards (RM). The reply tokens are
    `input_ids[prompt_length:]`: the reply's content and its end-of-turn token, which is the
    last token (the template's trailing newline is left out, so a reward read at the last token
    reads the end of the turn)."""

    input_ids: list[int]
    prompt_length: int
    context_truncated: bool = False

    @property
    def reply_mask(self) -> list[int]:
        """1 on reply tokens; always as long as input_ids (also after a caller cuts them)."""
        prompt = min(self.prompt_length, len(self.input_ids))
        return [0] * prompt + [1] * (len(self.input_ids) - prompt)

    def __len__(self) -> int:
        return len(self.input_ids)


def _prompt_and_reply_ids(
    tokenizer: Any, context: list[dict[str, str]], reply: str
) -> tuple[str, list[int], list[int], int]:
    """(prompt text, ids, token starts, prompt length in tokens) with ids ending at the reply's
    end-of-turn token."""
    prompt = render(tokenizer, context, add_generation_prompt=True)
    full = render(tokenizer, context + [{"role": "assistant", "content": reply}])
    if not full.startswith(prompt):
        raise TemplateError(
            f"chat template of {tokenizer.name_or_path!r} is not prefix-stable: the rendered "
            "context with the generation prompt is not a prefix of context + reply"
        )
    ids, starts = _encode(tokenizer, full)
    first, end = _span_tokens(starts, ids, (len(prompt), len(full)), end_of_turn_ids(tokenizer))
    return prompt, ids[:end], starts[:end], first


def tokenize_prompt_and_reply(
    tokenizer: Any, context: Sequence[MessageLike], reply: str, max_length: int
) -> PromptReplySample | None:
    """Tokenize context + reply; the reply is never cut. When too long, the context gives way:
    first whole earlier exchanges (oldest first, the system message kept), then the start of the
    last user message (its header and the system prompt kept). Returns None when even the last
    user message cannot make room (the caller counts it as dropped)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    msgs = as_dicts(context)
    if not msgs or msgs[-1]["role"] != "user":
        raise ValueError("the context must end with a user message")
    system = msgs[:1] if msgs[0]["role"] == "system" else []
    turns = msgs[len(system) :]
    truncated = False
    while True:
        prompt, ids, starts, prompt_len = _prompt_and_reply_ids(tokenizer, system + turns, reply)
        if len(ids) <= max_length:
            return PromptReplySample(ids, prompt_len, context_truncated=truncated)
        if len(turns) <= 1:
            break
        turns = turns[2:]  # drop the oldest user -> assistant exchange
        truncated = True
    # Only [system, last user] is left: cut tokens from the start of the user's text.
    overflow = len(ids) - max_length
    content = turns[-1]["content"]
    at = prompt.rfind(content)
    if at < 0:
        content = content.strip()
        at = prompt.rfind(content)
    if at < 0 or not content:
        return None
    first = bisect_left(starts, at)
    stop = bisect_left(starts, at + len(content))
    if stop - first <= overflow:  # not even one token of the question would remain
        return None
    kept = ids[:first] + ids[first + overflow :]
    return PromptReplySample(kept, prompt_len - overflow, context_truncated=True)
