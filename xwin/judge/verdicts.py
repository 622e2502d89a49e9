"""Reading a judge's reply, strictly, and combining the two orders of a swapped comparison.

Formats are MT-bench's: a single grade is `[[rating]]` (1-10), a pairwise verdict `[[A]]`,
`[[B]]` or `[[C]]` (tie). Anything else is unparseable and counted, never guessed."""

from __future__ import annotations

import re
from collections import Counter
from enum import Enum

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_PAIR = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(text: str | None, low: float = 1.0, high: float = 10.0) -> float | None:
    """The last `[[x]]` in the reply (judges sometimes echo the prompt's example `[[5]]` before
    their own verdict); None when there is none or it lies outside [low, high]."""
    matches = _RATING.findall(text or "")
    if not matches:
        return None
    value = float(matches[-1])
    return value if low <= value <= high else None


def parse_pairwise(text: str | None) -> str | None:
    """'A', 'B' or 'C' (tie); None when no verdict or more than one different verdict appears
    (FastChat's rule: a reply naming both [[A]] and [[B]] is ambiguous)."""
    found = set(_PAIR.findall(text or ""))
    return found.pop() if len(found) == 1 else None


class Outcome(str, Enum):
    """A swapped comparison of X against Y, seen from X."""

    WIN = "win"
    LOSS = "loss"
    TIE = "tie"
    INCONSISTENT = "inconsistent"  # the verdict followed the position, not the answers
    ERROR = "error"  # at least one order had no parseable verdict


# Ties and order-dependent verdicts count half in a win rate; errors are left out.
OUTCOME_SCORE = {Outcome.WIN: 1.0, Outcome.LOSS: 0.0, Outcome.TIE: 0.5, Outcome.INCONSISTENT: 0.5}


def combine_swapped(x_first: str | None, y_first: str | None) -> Outcome:
    """x_first: the verdict with X shown as assistant A; y_first: with Y shown as A. A win
    counts only if both orders name the same answer; a tie only if both say tie."""
    if x_first is None or y_first is None:
        return Outcome.ERROR
    winner_1 = {"A": "x", "B": "y", "C": "tie"}[x_first]
    winner_2 = {"A": "y", "B": "x", "C": "tie"}[y_first]
    if winner_1 != winner_2:
        return Outcome.INCONSISTENT
    return {"x": Outcome.WIN, "y": Outcome.LOSS, "tie": Outcome.TIE}[winner_1]


def flip(outcome: Outcome) -> Outcome:
    """The same comparison seen from Y."""
    return {Outcome.WIN: Outcome.LOSS, Outcome.LOSS: Outcome.WIN}.get(outcome, outcome)


def swap_agreement(outcomes: list[Outcome]) -> float | None:
    """Share of comparisons whose two orders agree, among those with both verdicts parsed:
    the judge's agreement with itself under position swap."""
    judged = [o for o in outcomes if o is not Outcome.ERROR]
    if not judged:
        return None
    return sum(o is not Outcome.INCONSISTENT for o in judged) / len(judged)


def outcome_counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts = Counter(o.value for o in outcomes)
    return {o.value: counts.get(o.value, 0) for o in Outcome}


def verdict_constraint(kind: str, max_tokens: int) -> dict:
    """Request fields that make a vLLM server's structured-output decoding force a short
    rationale followed by exactly one verdict. Small local judges rarely keep the format on
    their own; hosted APIs do not accept this field. The rationale is capped in characters at
    max_tokens - 16, so the verdict always fits in the token budget (a token is >= 1 char)."""
    verdict = r"\[\[(10|[1-9])\]\]" if kind == "single" else r"\[\[[ABC]\]\]"
    return {"structured_outputs": {"regex": rf"[^\[\]]{{0,{max(0, max_tokens - 16)}}}{verdict}"}}
