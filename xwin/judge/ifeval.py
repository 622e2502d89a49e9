"""Verifiable instruction following as a benchmark (IFEval's method): every model answers the
same prompts, each carrying constraints ("no commas", "at least 150 words", ...), and a program
checks every answer. No judge model decides anything, and no stage trains on these prompts, so
it is the run's gold metric.

Per model: prompt-level accuracy (every constraint of the prompt followed) and instruction-level
accuracy (each constraint on its own), strict and loose, each with a Wilson interval, and the
answers' lengths (the first thing to check beside any gain). Between two models on the same
prompts: the paired difference of prompt-level strict accuracy with a paired bootstrap interval,
and McNemar's exact test on the prompts where exactly one of them succeeded.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xwin.judge.stats import mcnemar_exact, paired_bootstrap, wilson_interval
from xwin.judge.verifiable import Constraint, VerifiablePrompt, check

LEVELS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


@dataclass(frozen=True)
class CheckedAnswer:
    """One model's answer to one prompt, checked: a (strict, loose) verdict per constraint."""

    key: str
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]
    chars: int
    words: int

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def check_answers(prompts: Sequence[VerifiablePrompt], answers: Mapping[str, str]) -> list[CheckedAnswer]:
    """Every prompt's answer checked against its constraints; a prompt without an answer counts
    as an empty answer (it follows nothing that asks for content)."""
    checked = []
    for prompt in prompts:
        answer = answers.get(prompt.key, "")
        verdicts = [check(answer, c, prompt.prompt) for c in prompt.constraints]
        checked.append(CheckedAnswer(prompt.key, tuple(s for s, _ in verdicts),
                                     tuple(loose for _, loose in verdicts), len(answer),
                                     len(answer.split())))
    return checked


def model_summary(checked: Sequence[CheckedAnswer], confidence: float = 0.95) -> dict[str, Any]:
    """The four accuracies with Wilson intervals (prompt-level over prompts, instruction-level
    over instructions) and the answers' mean and median length in characters and words."""
    n_prompts = len(checked)
    n_instructions = sum(len(c.strict) for c in checked)
    successes = {
        "prompt_strict": sum(c.prompt_strict for c in checked),
        "prompt_loose": sum(c.prompt_loose for c in checked),
        "instruction_strict": sum(sum(c.strict) for c in checked),
        "instruction_loose": sum(sum(c.loose) for c in checked),
    }
    out: dict[str, Any] = {"n_prompts": n_prompts, "n_instructions": n_instructions}
    for level in LEVELS:
        n = n_prompts if level.startswith("prompt") else n_instructions
        low, high = wilson_interval(successes[level], n, confidence)
        out[level] = {"value": successes[level] / n if n else float("nan"), "ci": [low, high],
                      "n": n}
    for unit in ("chars", "words"):
        lengths = [getattr(c, unit) for c in checked]
        out[f"length_{unit}"] = {"mean": statistics.fmean(lengths) if lengths else float("nan"),
                                 "median": statistics.median(lengths) if lengths else float("nan")}
    return out


def paired_comparison(x: Sequence[CheckedAnswer], y: Sequence[CheckedAnswer], confidence: float = 0.95,
                      samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Model X against model Y on the same prompts, prompt-level strict: X's accuracy minus Y's
    with a paired bootstrap interval (resampling prompts), and McNemar's exact p-value."""
    x_by_key = {c.key: c.prompt_strict for c in x}
    y_by_key = {c.key: c.prompt_strict for c in y}
    keys = [k for k in x_by_key if k in y_by_key]
    xs = [float(x_by_key[k]) for k in keys]
    ys = [float(y_by_key[k]) for k in keys]
    boot = paired_bootstrap(xs, ys, confidence=confidence, samples=samples, seed=seed)
    test = mcnemar_exact([bool(v) for v in xs], [bool(v) for v in ys])
    return {"diff": boot["difference"], "ci": [boot["ci_low"], boot["ci_high"]], "n": len(keys),
            "level": "prompt_strict", "mcnemar_p": test["p_value"], "only_x": test["b"],
            "only_y": test["c"]}


def benchmark(prompts: Sequence[VerifiablePrompt], answers: Mapping[str, Mapping[str, str]],
              pairs: Sequence[tuple[str, str]] = (), confidence: float = 0.95, samples: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """`answers`: model label -> prompt key -> answer. `pairs`: (x, y) model labels to compare,
    e.g. ("dpo", "sft"). Returns {"n_prompts", "models": {label: summary},
    "paired": {"x_vs_y": comparison}, "by_instruction": {label: {id: strict accuracy}}}."""
    checked = {label: check_answers(prompts, mine) for label, mine in answers.items()}
    by_instruction: dict[str, dict[str, float]] = {}
    for label, rows in checked.items():
        counts: dict[str, list[int]] = {}
        for prompt, row in zip(prompts, rows):
            for constraint, ok in zip(prompt.constraints, row.strict):
                n_ok = counts.setdefault(constraint.instruction_id, [0, 0])
                n_ok[0] += 1
                n_ok[1] += ok
        by_instruction[label] = {i: ok / n for i, (n, ok) in sorted(counts.items())}
    return {
        "n_prompts": len(prompts),
        "models": {label: model_summary(rows, confidence) for label, rows in checked.items()},
        "paired": {f"{a}_vs_{b}": paired_comparison(checked[a], checked[b], confidence, samples, seed)
                   for a, b in pairs if a in checked and b in checked},
        "by_instruction": by_instruction,
    }


def prompts_to_check(prompts: Sequence[Any]) -> list[VerifiablePrompt]:
    """The records (`xwin.data.schemas.Prompt`) that carry constraints, as checkable prompts: the
    last user turn is the prompt text the checkers see."""
    return [VerifiablePrompt(key=p.id, prompt=p.messages[-1].content,
                             constraints=[Constraint(**c.model_dump()) for c in p.constraints])
            for p in prompts if p.constraints]


def model_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Every later model against every earlier one, in the order the models were given (the
    pipeline's: sft, rs, dpo): ("rs", "sft"), ("dpo", "sft"), ("dpo", "rs")."""
    return [(labels[j], labels[i]) for j in range(len(labels)) for i in range(j)]


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def markdown(sets: Mapping[str, Mapping[str, Any]], confidence: float = 0.95) -> list[str]:
    """The report's tables: per set (held-out prompts, IFBench), every model's four accuracies
    with intervals and answer lengths, then the paired differences."""
    ci = f"{confidence:.0%} CI"
    lines = ["### Verifiable instruction following (checked by program; no judge)", ""]
    for name, result in sets.items():
        lines += [f"{name}: {result['n_prompts']} prompts", "",
                  f"| model | prompt strict | {ci} | prompt loose | instruction strict | "
                  "instruction loose | mean length (words) | median length (words) |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, s in result["models"].items():
            lo, hi = s["prompt_strict"]["ci"]
            lines.append(f"| {label} | {_pct(s['prompt_strict']['value'])} | [{_pct(lo)}, "
                         f"{_pct(hi)}] | {_pct(s['prompt_loose']['value'])} | "
                         f"{_pct(s['instruction_strict']['value'])} | "
                         f"{_pct(s['instruction_loose']['value'])} | "
                         f"{s['length_words']['mean']:.0f} | {s['length_words']['median']:.0f} |")
        lines.append("")
        if result["paired"]:
            lines += [f"| {name}: X vs Y (prompt strict) | X - Y | {ci} (paired bootstrap) | "
                      "only X / only Y | McNemar p |", "|---|---|---|---|---|"]
            for pair, p in result["paired"].items():
                lines.append(f"| {pair.replace('_vs_', ' vs ')} | {100 * p['diff']:+.1f} pts | "
                             f"[{100 * p['ci'][0]:+.1f}, {100 * p['ci'][1]:+.1f}] | "
                             f"{p['only_x']} / {p['only_y']} | {p['mcnemar_p']:.3f} |")
            lines.append("")
    return lines


def verifiable_results(prompts: Sequence[Any], ifbench: Sequence[VerifiablePrompt],
                       answers: Mapping[str, Mapping[str, Any]], confidence: float = 0.95,
                       samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The eval stage's gold metric per set: "ifeval" (its `prompts` input's constraint prompts)
    and "ifbench" (IFBench_test items); `answers`: label -> eval's answers dict, whose "prompts"
    and "ifbench" lists follow `prompts` and `ifbench` in order."""
    sets = {"ifeval": (prompts_to_check(prompts), [p.id for p in prompts], "prompts"),
            "ifbench": (list(ifbench), [item.key for item in ifbench], "ifbench")}
    pairs = model_pairs(list(answers))
    out = {}
    for name, (items, keys, kind) in sets.items():
        if items:
            by_model = {label: dict(zip(keys, mine.get(kind, []))) for label, mine in answers.items()}
            out[name] = benchmark(items, by_model, pairs, confidence, samples, seed)
    return out
