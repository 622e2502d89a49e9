"""N *distinct* responses per context (Xwin-Set keeps 64 unique responses per prompt): sample,
drop exact duplicates and empty responses, and ask again for the missing ones, a bounded number
of rounds. Prompts that still fall short are reported with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xwin.sampling.generation import Engine, Generation, GenerationParams

# Why a prompt got fewer than n responses.
SHORT_GREEDY = "greedy"  # temperature 0: one answer exists
SHORT_REPEATS = "repeats"  # the model kept repeating itself until max_rounds ran out
SHORT_EMPTY = "empty"  # the model kept producing empty answers


@dataclass
class DistinctSamples:
    """The distinct responses of one context and how they were obtained."""

    generations: list[Generation] = field(default_factory=list)
    rounds: int = 0
    duplicates: int = 0  # exact repeats of an earlier response, dropped
    empty: int = 0  # empty / whitespace-only responses, dropped
    short_reason: str | None = None  # set when fewer than n were found

    def as_meta(self) -> dict:
        meta = {"rounds": self.rounds, "duplicates": self.duplicates, "empty": self.empty}
        if self.short_reason:
            meta["short_reason"] = self.short_reason
        return meta


def add_distinct(samples: DistinctSamples, seen: set[str], new: Sequence[Generation], n: int) -> None:
    """Keep the new generations that are non-empty and not exact repeats, up to n in all."""
    for g in new:
        if not g.text.strip():
            samples.empty += 1
        elif g.text in seen:
            samples.duplicates += 1
        elif len(samples.generations) < n:
            seen.add(g.text)
            samples.generations.append(g)


def sample_distinct(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    n: int,
    params: GenerationParams,
    max_rounds: int = 4,
) -> list[DistinctSamples]:
    """Up to `n` distinct non-empty responses for every (templated) prompt.

    Round 1 asks for n per prompt; each further round asks only the prompts still short for the
    missing count, all prompts in one engine call so the backend can batch them. Greedy decoding
    cannot give a second distinct answer, so it stops after one response.
    """
    results = [DistinctSamples() for _ in prompts]
    seen: list[set[str]] = [set() for _ in prompts]
    target = 1 if params.temperature == 0 else n
    for _ in range(max_rounds if target > 1 else 1):
        pending = [i for i, r in enumerate(results) if len(r.generations) < target]
        if not pending:
            break
        counts = [target - len(results[i].generations) for i in pending]
        out = engine.generate_from_ids([prompts[i] for i in pending], counts, params)
        for i, new in zip(pending, out):
            results[i].rounds += 1
            add_distinct(results[i], seen[i], new, target)
    for r in results:
        if len(r.generations) < n:
            if params.temperature == 0:
                r.short_reason = SHORT_GREEDY
            else:
                r.short_reason = SHORT_EMPTY if r.empty > r.duplicates else SHORT_REPEATS
    return results
