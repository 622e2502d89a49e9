"""Preference pairs by verifiable compliance: which of two replies to a prompt follows its
constraints better, decided by the checkers of `xwin.judge.verifiable`, never by a model.

The order, most important first (IFEval's accuracies, prompt level before instruction level):

1. prompt-level strict: every instruction followed strictly beats anything less;
2. prompt-level loose: every instruction followed loosely (IFEval's forgiving transformations);
3. the share of the prompt's instructions followed strictly;
4. the share followed loosely.

Two replies equal on all four are tied; two fully compliant replies always are (strict implies
loose). A tie is no preference: the caller drops it or lets an LLM judge decide it.

- InstructionVerdict  one instruction's (strict, loose) verdict on one reply
- Compliance          a reply with its verdicts: the four criteria, `key()` to rank by, `record()`
- assess              check one reply against a prompt's constraints
- decisive            the first criterion on which two replies differ (None: a tie)
- pair_by_compliance  the candidate pairs of one context: best vs worst, or every pair
- compliance_summary  prompt- and instruction-level rates over many checked replies
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from xwin.judge.verifiable import Constraint, check

Pairing = Literal["best_worst", "all"]
CRITERIA: tuple[str, ...] = ("prompt_strict", "prompt_loose", "instruction_strict",
                             "instruction_loose")


@dataclass(frozen=True)
class InstructionVerdict:
    instruction_id: str
    kwargs: dict[str, Any]
    strict: bool
    loose: bool

    def record(self) -> dict[str, Any]:
        return {"instruction_id": self.instruction_id, "kwargs": self.kwargs,
                "strict": self.strict, "loose": self.loose}


@dataclass(frozen=True)
class Compliance:
    """One reply and its verdict on each of the prompt's instructions (at least one)."""

    response: str
    verdicts: tuple[InstructionVerdict, ...]

    def __post_init__(self) -> None:
        if not self.verdicts:
            raise ValueError("a reply's compliance needs at least one instruction")

    @property
    def prompt_strict(self) -> bool:
        return all(v.strict for v in self.verdicts)

    @property
    def prompt_loose(self) -> bool:
        return all(v.loose for v in self.verdicts)

    @property
    def instruction_strict(self) -> float:
        """The share of the instructions followed strictly."""
        return sum(v.strict for v in self.verdicts) / len(self.verdicts)

    @property
    def instruction_loose(self) -> float:
        return sum(v.loose for v in self.verdicts) / len(self.verdicts)

    def key(self) -> tuple[float, ...]:
        """The four criteria in order: a larger key is a better reply, an equal key a tie."""
        return tuple(float(getattr(self, c)) for c in CRITERIA)

    def record(self) -> dict[str, Any]:
        """What a reader needs to audit a verdict: the four criteria and every instruction's."""
        return {**{c: getattr(self, c) for c in CRITERIA},
                "instructions": [v.record() for v in self.verdicts]}


def assess(response: str, constraints: Sequence[Constraint], prompt: str) -> Compliance:
    """Check `response` against every constraint; `prompt` is the user turn it answers (the few
    checkers that read the prompt get it)."""
    if not constraints:
        raise ValueError("a reply without constraints cannot be checked")
    return Compliance(response, tuple(
        InstructionVerdict(c.instruction_id, dict(c.kwargs), *check(response, c, prompt))
        for c in constraints))


def decisive(a: Compliance, b: Compliance) -> str | None:
    """The first criterion (of CRITERIA) on which a and b differ; None when they are tied."""
    return next((c for c, x, y in zip(CRITERIA, a.key(), b.key()) if x != y), None)


@dataclass(frozen=True)
class Candidate:
    """A pair of one context's replies. Decided (`decided_by` names the criterion): `first`
    complies better. Tied (`decided_by` None): neither does, in no particular order."""

    first: Compliance
    second: Compliance
    decided_by: str | None

    @property
    def tied(self) -> bool:
        return self.decided_by is None


def pair_by_compliance(replies: Sequence[Compliance],
                       pairing: Pairing = "best_worst") -> list[Candidate]:
    """The candidate pairs among one context's distinct replies, in a fixed order.

    best_worst: one pair, the best reply against the worst; replies of equal key keep their
    given order (the earlier ranks higher), so with every reply tied the pair is the first
    reply against the last. all: every pair of replies, in the order of
    `itertools.combinations`, the better complying one first. Fewer than two replies: none."""
    if len(replies) < 2:
        return []
    if pairing == "best_worst":
        ranked = sorted(replies, key=Compliance.key, reverse=True)  # stable: order kept on ties
        pairs = [(ranked[0], ranked[-1])]
    elif pairing == "all":
        pairs = list(combinations(replies, 2))
    else:
        raise ValueError(f"unknown pairing {pairing!r}")
    out = []
    for a, b in pairs:
        if b.key() > a.key():
            a, b = b, a
        out.append(Candidate(a, b, decisive(a, b)))
    return out


def compliance_summary(replies: Sequence[Compliance]) -> dict[str, float]:
    """Over every checked reply: how many, the share fully compliant (prompt level, strict and
    loose) and the share of all their instructions followed (instruction level). The rates are
    left out when no reply was checked."""
    out: dict[str, float] = {"responses_checked": len(replies)}
    if not replies:
        return out
    verdicts = [v for r in replies for v in r.verdicts]
    out["prompt_strict"] = sum(r.prompt_strict for r in replies) / len(replies)
    out["prompt_loose"] = sum(r.prompt_loose for r in replies) / len(replies)
    out["instruction_strict"] = sum(v.strict for v in verdicts) / len(verdicts)
    out["instruction_loose"] = sum(v.loose for v in verdicts) / len(verdicts)
    return out
