"""The two judging moves every benchmark and the annotator use: grade answers one by one, and
compare two answers in both orders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xwin.judge.client import JudgeClient, Messages
from xwin.judge.verdicts import Outcome, combine_swapped, parse_pairwise, parse_rating


@dataclass
class Grade:
    rating: float | None  # None: unparseable reply, or the endpoint refused the request
    judgment: str | None
    error: str | None = None

    @property
    def status(self) -> str:
        return "error" if self.error else ("ok" if self.rating is not None else "unparseable")


@dataclass
class Comparison:
    """X against Y: `x_first` is the verdict with X shown as assistant A, `y_first` with Y as A."""

    x_first: str | None
    y_first: str | None
    outcome: Outcome
    judgment_x_first: str | None
    judgment_y_first: str | None
    errors: int = 0  # requests the endpoint refused (0, 1 or 2)

    def record(self) -> dict[str, Any]:
        return {"verdict_x_first": self.x_first, "verdict_y_first": self.y_first,
                "outcome": self.outcome.value, "judgment_x_first": self.judgment_x_first,
                "judgment_y_first": self.judgment_y_first, "errors": self.errors}


def grade(client: JudgeClient, requests: list[Messages], extra: dict | None = None,
          desc: str = "grading") -> list[Grade]:
    grades = []
    for c in client.complete_many(requests, extra, desc=desc):
        grades.append(Grade(parse_rating(c.text), c.text, c.error))
    return grades


def compare_swapped(
    client: JudgeClient, pairs: list[tuple[Messages, Messages]], extra: dict | None = None,
    desc: str = "comparing",
) -> list[Comparison]:
    """pairs: (messages with X as A, messages with Y as A). Both orders go out in one batch."""
    replies = client.complete_many([m for pair in pairs for m in pair], extra, desc=desc)
    out = []
    for first, second in zip(replies[0::2], replies[1::2]):
        x_first, y_first = parse_pairwise(first.text), parse_pairwise(second.text)
        out.append(Comparison(x_first, y_first, combine_swapped(x_first, y_first), first.text,
                              second.text, errors=(first.error is not None) + (second.error is not None)))
    return out
