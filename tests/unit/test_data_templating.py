"""Loss masks checked token by token with SmolLM2's real tokenizer and chat template, on real
ShareGPT conversations; truncation; prompt + reply tokenization for DPO/RM; collators."""

from __future__ import annotations

import copy
from itertools import groupby

import pytest
import torch

from xwin.data.dataset import (
    PromptReplyCollator,
    SftCollator,
    build_sft_dataset,
    length_grouped_batches,
    pad_token_id,
)
from xwin.data.schemas import Conversation, Message
from xwin.data.sharegpt import ImportReport, convert_item, iter_sharegpt_items, sharegpt_file
from xwin.data.templating import (
    IGNORE_INDEX,
    TemplateError,
    render,
    render_prompt,
    tokenize_conversation,
    tokenize_prompt,
    tokenize_prompt_and_reply,
)

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(role: str, content: str) -> str:
    """SmolLM2's turn format, written out by hand (independent of the template code)."""
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def decode(tok, ids) -> str:
    return tok.decode(ids, clean_up_tokenization_spaces=False)


def runs(sample):
    """[(trained?, [token ids])] for consecutive tokens with the same mask."""
    pairs = zip(sample.input_ids, sample.labels, strict=True)
    return [
        (trained, [i for i, _ in group])
        for trained, group in groupby(pairs, key=lambda p: p[1] != IGNORE_INDEX)
    ]


def real_conversations(count: int, max_chars: int = 6000) -> list[Conversation]:
    """The first real ShareGPT conversations with >= 2 assistant turns (short enough to be quick,
    and whose assistant replies start with a visible character: see the leading-newline test)."""
    found = []
    for item in iter_sharegpt_items(sharegpt_file(), ImportReport(source="test")):
        result = convert_item(item)
        if isinstance(result, str):
            continue
        conv = result[0]
        replies = [m.content for m in conv.messages if m.role == "assistant"]
        if (
            len(replies) >= 2
            and sum(len(m.content) for m in conv.messages) <= max_chars
            and not any(r[0].isspace() for r in replies)
        ):
            found.append(conv)
            if len(found) == count:
                return found
    raise AssertionError("not enough multi-turn conversations in the ShareGPT file")


@pytest.fixture(scope="module")
def real() -> list[Conversation]:
    return real_conversations(12)


def test_trained_tokens_are_exactly_the_assistant_turns_token_by_token(tokenizer, real):
    for conv in real:
        sample = tokenize_conversation(tokenizer, conv.messages, max_length=100_000)
        assert sample is not None and not sample.truncated
        # the ids are the tokenization of the template's own rendering
        assert (
            sample.input_ids
            == tokenizer(render(tokenizer, conv.messages), add_special_tokens=False)["input_ids"]
        )
        for token, label in zip(sample.input_ids, sample.labels, strict=True):
            assert label in (token, IGNORE_INDEX)
        parts = runs(sample)
        trained = [decode(tokenizer, ids) for is_trained, ids in parts if is_trained]
        masked = [decode(tokenizer, ids) for is_trained, ids in parts if not is_trained]
        replies = [m.content for m in conv.messages if m.role == "assistant"]
        users = [m.content for m in conv.messages if m.role == "user"]
        # every assistant reply plus its end-of-turn marker, nothing more, nothing less
        assert trained == [reply + "<|im_end|>" for reply in replies]
        # and everything else (default system prompt, user turns, assistant headers, the
        # newline after each <|im_end|>) is masked
        assert (
            masked[0]
            == chatml("system", DEFAULT_SYSTEM)
            + chatml("user", users[0])
            + "<|im_start|>assistant\n"
        )
        assert masked[1:-1] == [
            "\n" + chatml("user", u) + "<|im_start|>assistant\n" for u in users[1:]
        ]
        assert masked[-1] == "\n"
        assert sample.num_trained == sum(len(ids) for t, ids in parts if t)


def test_explicit_system_prompt_replaces_the_default_and_is_masked(tokenizer):
    messages = [
        Message(role="system", content="Answer in French."),
        Message(role="user", content="Hello"),
        Message(role="assistant", content="Bonjour"),
    ]
    sample = tokenize_conversation(tokenizer, messages, 1000)
    parts = runs(sample)
    assert [(t, decode(tokenizer, ids)) for t, ids in parts] == [
        (
            False,
            chatml("system", "Answer in French.")
            + chatml("user", "Hello")
            + "<|im_start|>assistant\n",
        ),
        (True, "Bonjour<|im_end|>"),
        (False, "\n"),
    ]


def test_assistant_header_is_never_trained_even_when_the_reply_starts_with_newlines(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nHello  "}]
    sample = tokenize_conversation(tokenizer, messages, 1000)
    [trained] = [decode(tokenizer, ids) for t, ids in runs(sample) if t]
    # BPE merges the header's newline with the reply's first one into a single token; that
    # token holds header text, so it stays masked and the reply trains from its second newline
    assert trained == "\nHello  <|im_end|>"
    header_end = decode(
        tokenizer,
        [
            i
            for i, label in zip(sample.input_ids, sample.labels, strict=True)
            if label == IGNORE_INDEX
        ],
    )
    assert header_end.endswith("<|im_start|>assistant\n\n\n")


def test_truncation_keeps_a_partial_last_assistant_turn(tokenizer, real):
    conv = real[0]
    full = tokenize_conversation(tokenizer, conv.messages, 100_000)
    parts = runs(full)
    # cut 5 tokens into the second trained run (the second assistant turn)
    second_start = sum(len(ids) for _, ids in parts[:3])
    cut = second_start + 5
    sample = tokenize_conversation(tokenizer, conv.messages, cut)
    assert sample.truncated and len(sample) == cut
    assert sample.input_ids == full.input_ids[:cut] and sample.labels == full.labels[:cut]
    trained = [decode(tokenizer, ids) for t, ids in runs(sample) if t]
    replies = [m.content for m in conv.messages if m.role == "assistant"]
    assert trained[0] == replies[0] + "<|im_end|>"
    assert len(trained) == 2 and replies[1].startswith(trained[1]) and trained[1]
    assert sample.num_trained == len(parts[1][1]) + 5


def test_sample_with_no_trained_token_within_max_length_is_dropped_and_counted(tokenizer):
    long_question = Conversation(
        messages=[
            Message(role="user", content="word " * 300),
            Message(role="assistant", content="Short."),
        ]
    )
    short = Conversation(
        messages=[Message(role="user", content="Hi"), Message(role="assistant", content="Hello")]
    )
    assert tokenize_conversation(tokenizer, long_question.messages, 200) is None
    samples, report = build_sft_dataset([short, long_question, short], tokenizer, 200)
    assert len(samples) == 2 and report.kept == 2
    assert dict(report.dropped) == {"no_trained_tokens_within_max_length": 1}
    assert report.trained_tokens == 2 * samples[0].num_trained and samples[0].num_trained == 2
    assert report.tokens == 2 * len(samples[0]) and report.truncated == 0


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    rewriting = copy.deepcopy(tokenizer)
    # shows only the latest assistant reply in full: not prefix-stable
    rewriting.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}"
        "<|im_start|>assistant\n[earlier reply]<|im_end|>\n{% else %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(TemplateError, match="not prefix-stable at message 1"):
        tokenize_conversation(rewriting, messages, 100)
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(TemplateError, match="has no chat template"):
        tokenize_conversation(no_template, messages, 100)


def test_tokenize_prompt_ends_with_the_generation_prompt(tokenizer):
    messages = [Message(role="user", content="What is the capital of France?")]
    ids = tokenize_prompt(tokenizer, messages)
    text = (
        chatml("system", DEFAULT_SYSTEM)
        + chatml("user", messages[0].content)
        + "<|im_start|>assistant\n"
    )
    assert render_prompt(tokenizer, messages) == text
    assert decode(tokenizer, ids) == text
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


CONTEXT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "one two three four five six seven eight nine ten eleven twelve"},
]


def test_prompt_and_reply_marks_the_reply_and_ends_at_end_of_turn(tokenizer):
    sample = tokenize_prompt_and_reply(tokenizer, CONTEXT, "Red and green.", max_length=1000)
    assert not sample.context_truncated
    assert decode(tokenizer, sample.input_ids[: sample.prompt_length]) == render_prompt(
        tokenizer, CONTEXT
    )
    assert decode(tokenizer, sample.input_ids[sample.prompt_length :]) == "Red and green.<|im_end|>"
    assert sample.input_ids[-1] == tokenizer.eos_token_id
    assert sample.input_ids[: sample.prompt_length] == tokenize_prompt(tokenizer, CONTEXT)
    assert sample.reply_mask == [0] * sample.prompt_length + [1] * (
        len(sample) - sample.prompt_length
    )


def test_prompt_and_reply_truncation_gives_way_in_the_context_never_the_reply(tokenizer):
    reply = "Red and green."
    full = tokenize_prompt_and_reply(tokenizer, CONTEXT, reply, max_length=1000)
    reply_len = len(full) - full.prompt_length
    without_first_exchange = tokenize_prompt_and_reply(
        tokenizer, [CONTEXT[0], CONTEXT[3]], reply, 1000
    )

    # one token too many: the oldest exchange goes, the system prompt stays
    sample = tokenize_prompt_and_reply(tokenizer, CONTEXT, reply, max_length=len(full) - 1)
    assert sample.context_truncated
    assert sample.input_ids == without_first_exchange.input_ids

    # tighter still: the start of the last question is cut, its header and the system kept
    limit = len(without_first_exchange) - 4
    sample = tokenize_prompt_and_reply(tokenizer, CONTEXT, reply, max_length=limit)
    assert len(sample) == limit and sample.context_truncated
    text = decode(tokenizer, sample.input_ids)
    assert text.startswith(chatml("system", "Be brief.") + "<|im_start|>user\n")
    assert "one two three" not in text and "eleven twelve<|im_end|>" in text
    assert decode(tokenizer, sample.input_ids[sample.prompt_length :]) == reply + "<|im_end|>"
    assert len(sample) - sample.prompt_length == reply_len

    # the reply alone leaves no room for the question: dropped (None), never cut
    header = len(tokenize_prompt(tokenizer, [CONTEXT[0], {"role": "user", "content": "x"}]))
    assert (
        tokenize_prompt_and_reply(tokenizer, CONTEXT, reply, max_length=header + reply_len - 1)
        is None
    )


def test_collators_pad_right_with_masks(tokenizer):
    a = tokenize_conversation(
        tokenizer,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}],
        100,
    )
    b = tokenize_conversation(
        tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], 100
    )
    pad = pad_token_id(tokenizer)
    batch = SftCollator(pad)([a, b])
    width = max(len(a), len(b))
    assert batch["input_ids"].shape == (2, width) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][1].tolist() == b.input_ids + [pad] * (width - len(b))
    assert batch["attention_mask"][1].tolist() == [1] * len(b) + [0] * (width - len(b))
    assert batch["labels"][1].tolist() == b.labels + [IGNORE_INDEX] * (width - len(b))
    assert batch["labels"][0].tolist() == a.labels

    p = tokenize_prompt_and_reply(tokenizer, CONTEXT, "Red.", 1000)
    q = tokenize_prompt_and_reply(tokenizer, CONTEXT, "Red, green and a long tail of words.", 1000)
    pair = PromptReplyCollator(pad)([q, p])
    assert pair["reply_mask"][1].tolist() == p.reply_mask + [0] * (len(q) - len(p))
    assert pair["reply_mask"].sum().item() == sum(p.reply_mask) + sum(q.reply_mask)


def test_length_grouped_batches_cover_everything_once_with_less_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 2000) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 8, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert batches == length_grouped_batches(lengths, 8, seed=1)

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    order = list(range(1000))
    rng.shuffle(order)
    random_batches = [order[i : i + 8] for i in range(0, 1000, 8)]
    assert padding(batches) < padding(random_batches) / 5
