"""AlpacaEval-style evaluation: each model's outputs against a reference model's outputs for
the same instructions, judged in both orders; win rate (ties half) with an interval, and the
length-controlled win rate (AlpacaEval 2.0's GLM, fitted by the alpaca-eval package). Files use
AlpacaEval's format: a JSON list (or JSONL) of {"instruction", "output", "generator", ...}; an
optional "input" is appended to the instruction (Alpaca's own data has one)."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from xwin.data.io import DataError, format_record_error
from xwin.judge.client import JudgeClient
from xwin.judge.judging import compare_swapped
from xwin.judge.prompts import alpaca_pair
from xwin.judge.stats import (
    length_controlled_win_rate,
    mcnemar_exact,
    paired_bootstrap,
    win_rate,
)
from xwin.judge.verdicts import OUTCOME_SCORE, Outcome, swap_agreement


class AlpacaItem(BaseModel):
    model_config = ConfigDict(extra="ignore")  # AlpacaEval files carry dataset, datasplit, ...

    instruction: str
    input: str | None = None
    output: str | None = None
    generator: str | None = None

    @property
    def prompt(self) -> str:
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def load_alpaca(path: str | Path) -> list[AlpacaItem]:
    """A JSON list or JSONL file (a folder: its one .json/.jsonl file); errors name the file
    and the record."""
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.json"), *path.glob("*.jsonl")])
        if len(files) != 1:
            raise DataError(f"{path}: expected one .json or .jsonl file, found {len(files)}")
        path = files[0]
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        sources = [f"{path}: record {i}" for i in range(len(data))] if isinstance(data, list) else []
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of instructions")
    except json.JSONDecodeError:
        data, sources = [], []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
                sources.append(f"{path}:{lineno}")
    items = []
    for source, obj in zip(sources, data):
        try:
            items.append(AlpacaItem.model_validate(obj))
        except ValidationError as e:
            raise DataError(format_record_error(source, e)) from None
    if not items:
        raise DataError(f"{path}: no instructions")
    return items


def reference_outputs(items: list[AlpacaItem], reference: list[AlpacaItem] | None,
                      source: str) -> list[str]:
    """The reference output of every instruction: from the reference file (matched by prompt
    text), else from the instruction file's own `output` field (AlpacaEval's eval set ships
    text-davinci-003's / GPT-4-turbo's outputs there)."""
    by_prompt = {r.prompt: r.output for r in reference} if reference is not None else None
    outputs = []
    for i, item in enumerate(items):
        out = by_prompt.get(item.prompt) if by_prompt is not None else item.output
        if not out:
            raise DataError(f"{source}: no reference output for instruction {i} "
                            f"({item.instruction[:60]!r})")
        outputs.append(out)
    return outputs


def compare_to_reference(client: JudgeClient, items: list[AlpacaItem], references: list[str],
                         outputs: dict[str, list[str]], extra: dict | None = None) -> list[dict]:
    """Each model (X) against the reference (Y) on every instruction, in both orders."""
    jobs, pairs = [], []
    for model, texts in outputs.items():
        for i, (item, ref, out) in enumerate(zip(items, references, texts)):
            jobs.append((model, i, item, ref, out))
            pairs.append((alpaca_pair(item.prompt, out, ref), alpaca_pair(item.prompt, ref, out)))
    comparisons = compare_swapped(client, pairs, extra, desc="AlpacaEval pairwise")
    return [{"kind": "alpaca", "model_x": model, "model_y": "reference", "index": i,
             "instruction": item.instruction, "output_length": len(out),
             "reference_length": len(ref), **c.record()}
            for (model, i, item, ref, out), c in zip(jobs, comparisons)]


def summarize_alpaca(records: list[dict], confidence: float = 0.95, interval: str = "wilson",
                     bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per model: win rate against the reference with its interval and counts; lc_win_rate, the
    win rate at equal length (stats.length_controlled_win_rate, over the judged items: ties and
    inconsistent verdicts half, unparseable ones left out); average lengths; swap agreement."""
    out = {}
    for model in dict.fromkeys(r["model_x"] for r in records):
        mine = [r for r in records if r["model_x"] == model]
        outcomes = [Outcome(r["outcome"]) for r in mine]
        judged = [r for r, o in zip(mine, outcomes) if o in OUTCOME_SCORE]
        out[model] = {
            **win_rate(outcomes, confidence, interval, bootstrap_samples, seed),
            "lc_win_rate": length_controlled_win_rate(
                [OUTCOME_SCORE[Outcome(r["outcome"])] for r in judged],
                [r["output_length"] for r in judged], [r["reference_length"] for r in judged]),
            "avg_length": sum(r["output_length"] for r in mine) / len(mine),
            "reference_avg_length": sum(r["reference_length"] for r in mine) / len(mine),
            "swap_agreement": swap_agreement(outcomes),
        }
    return out


def paired_alpaca(records: list[dict], confidence: float = 0.95, samples: int = 1000,
                  seed: int = 0) -> list[dict]:
    """Per model pair, on the instructions both were judged on (no error either side): the
    difference of their scores against the reference (win 1, tie or inconsistent 1/2, loss 0)
    with a paired bootstrap interval, and McNemar's exact test on "beat the reference in both
    orders" (`mcnemar`: b, c, p_value)."""
    outcomes = {(r["model_x"], r["index"]): Outcome(r["outcome"]) for r in records}
    models = list(dict.fromkeys(r["model_x"] for r in records))
    indices = sorted({r["index"] for r in records})
    out = []
    for x, y in combinations(models, 2):
        pairs = [(outcomes[x, i], outcomes[y, i]) for i in indices
                 if (x, i) in outcomes and (y, i) in outcomes
                 and Outcome.ERROR not in (outcomes[x, i], outcomes[y, i])]
        out.append({"model_x": x, "model_y": y,
                    **paired_bootstrap([OUTCOME_SCORE[a] for a, _ in pairs],
                                       [OUTCOME_SCORE[b] for _, b in pairs], confidence, samples, seed),
                    "mcnemar": mcnemar_exact([a is Outcome.WIN for a, _ in pairs],
                                             [b is Outcome.WIN for _, b in pairs])})
    return out
