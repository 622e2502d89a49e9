"""Record schemas: every dataset is JSONL of one of these. OpenAI-style messages throughout, so
a file made by another tool loads unchanged. Numbers are finite: a NaN or infinite score is
refused, not written back as null."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("message content is empty")
        return v


def _check_turns(messages: list[Message], *, last: str | None) -> list[Message]:
    """System first if at all; then user/assistant alternating, starting with user."""
    if not messages:
        raise ValueError("no messages")
    turns = messages[1:] if messages[0].role == "system" else messages
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise ValueError(f"message {i + len(messages) - len(turns)}: role {m.role!r}, expected {expected!r}")
    if last is not None and (not turns or turns[-1].role != last):
        raise ValueError(f"the last message must be from the {last}")
    return messages


class Conversation(Record):
    """A multi-turn chat for SFT/RS: the loss covers every assistant turn."""

    id: str | None = None
    messages: list[Message]
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _turns(cls, v: list[Message]) -> list[Message]:
        return _check_turns(v, last="assistant")


class VerifiableInstruction(Record):
    """A constraint a program can check in a response (IFEval's method): the checker's id, e.g.
    `length_constraints:number_words`, and its arguments. `xwin.judge.verifiable` checks it; here
    it is only data, so that records stay readable without the checkers installed."""

    instruction_id: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Prompt(Record):
    """A context to answer: messages ending with a user turn (multi-turn allowed), optionally
    with the verifiable instructions its last user turn states."""

    id: str
    messages: list[Message]
    constraints: list[VerifiableInstruction] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _turns(cls, v: list[Message]) -> list[Message]:
        return _check_turns(v, last="user")


class PreferencePair(Record):
    """Xwin-Pair: a shared context (ending with a user turn), a chosen and a rejected reply."""

    id: str | None = None
    context: list[Message]
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    source: str | None = None  # who labelled it: "judge:<model>", "rm", "demo-stand-in", ...
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("context")
    @classmethod
    def _turns(cls, v: list[Message]) -> list[Message]:
        return _check_turns(v, last="user")

    @model_validator(mode="after")
    def _replies(self) -> PreferencePair:
        for name in ("chosen", "rejected"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} reply is empty")
        return self


class Response(Record):
    text: str
    score: float | None = None
    finish_reason: str | None = None  # "stop" | "length" | ...
    num_tokens: int | None = None


class MultiwiseRecord(Record):
    """Xwin-Set: one context with N responses (and, once scored, their RM scores)."""

    id: str
    context: list[Message]
    responses: list[Response]
    constraints: list[VerifiableInstruction] = Field(default_factory=list)  # the prompt's
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("context")
    @classmethod
    def _turns(cls, v: list[Message]) -> list[Message]:
        return _check_turns(v, last="user")


KINDS: dict[str, type[Record]] = {
    "conversations": Conversation,
    "prompts": Prompt,
    "pairs": PreferencePair,
    "multiwise": MultiwiseRecord,
}
