"""The table a run's report opens with: what each stage's model gained, measured on held-out
prompts. Per model (the base, then the pipeline's policies in order): verifiable instruction
following (prompt-level strict accuracy with its interval: the gold metric, checked by program),
the RM score of its held-out answers, its answers' length, and judged numbers only where the
judge passed its gate; then the paired differences against the SFT model. Read from eval's
results.json alone."""

from __future__ import annotations

import math
from typing import Any

from xwin.stages.registry import STAGES

POLICIES = tuple(stage.name for stage in STAGES if stage.output == "model")


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def model_order(labels) -> list[str]:
    """base first, then the policies in pipeline order, then anything else by name."""
    known = ["base", *POLICIES]
    return [m for m in known if m in labels] + sorted(m for m in labels if m not in known)


def per_model(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each evaluated model's held-out figures, base first then pipeline order: the gold
    metric's value, interval and prompt count, its answers' length and their mean RM score."""
    verifiable = ((results.get("verifiable") or {}).get("ifeval") or {}).get("models") or {}
    rewards = results.get("reward") or {}
    rows = {}
    for label in model_order(set(verifiable) | set(rewards)):
        strict = (verifiable.get(label) or {}).get("prompt_strict") or {}
        length = (verifiable.get(label) or {}).get("length_words") or {}
        rows[label] = {"value": strict.get("value"), "ci": strict.get("ci"), "n": strict.get("n"),
                       "length_words_mean": length.get("mean"),
                       "length_words_median": length.get("median"),
                       "rm_score": (rewards.get(label) or {}).get("prompts_mean")}
    return rows


def stage_gains(results: dict[str, Any]) -> list[str]:
    """Markdown lines of the "Stage gains" section, or none when eval measured nothing per model."""
    verifiable = (results.get("verifiable") or {}).get("ifeval") or {}
    gate = results.get("judge_gate") or {}
    judged_ok = bool(gate.get("checked")) and gate.get("passed") is True
    single = (results.get("mtbench") or {}).get("single") or {}
    models = per_model(results)
    if not models:
        return []
    conf = f"{results.get('confidence', 0.95):.0%} CI"
    header = ["model", "verifiable (prompt strict)", conf, "RM score (held-out)",
              "answer length (words, mean / median)"]
    if judged_ok and single:
        header.append("MT-bench grade")
    lines = ["## Stage gains", "",
             (f"Held-out prompts the training never saw ({verifiable.get('n_prompts', 0)} with "
              "verifiable instructions, checked by program); "
              + ("judged numbers shown: the judge passed its gate." if judged_ok else
                 "no judged number here: the judge " + ("failed its gate (see below)."
                                                        if gate.get("checked") else
                                                        "was not checked."))), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, m in models.items():
        ci = m["ci"] or [math.nan, math.nan]
        row = [label, _pct(m["value"]), f"[{_pct(ci[0])}, {_pct(ci[1])}]", _num(m["rm_score"]),
               f"{_num(m['length_words_mean'], 0)} / {_num(m['length_words_median'], 0)}"]
        if judged_ok and single:
            row.append(_num((single.get(label) or {}).get("score"), 2))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    paired = verifiable.get("paired", {})
    shown = [(name, paired[name]) for name in ("rs_vs_sft", "dpo_vs_sft", "dpo_vs_rs", "sft_vs_base")
             if name in paired]
    if shown:
        lines += [f"Paired on the same prompts (prompt strict, X - Y, {conf} by paired bootstrap; "
                  "McNemar's exact p):", ""]
        for name, p in shown:
            lo, hi = p["ci"]
            verdict = "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"
            lines.append(f"- **{name.replace('_vs_', ' - ')}**: {100 * p['diff']:+.1f} points "
                         f"[{100 * lo:+.1f}, {100 * hi:+.1f}] ({verdict}; n = {p['n']}, "
                         f"p = {p['mcnemar_p']:.3f})")
        lines.append("")
    return lines


GOLD_METRIC = "ifeval prompt-level strict accuracy"


def gains_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """The Stage gains in machine-readable form (the report's `gains.json`; a study adds its
    command, wall time and CPU): per model the gold metric's value, interval and prompt count,
    and every paired difference with its interval. None when eval checked no verifiable prompt."""
    verifiable = (results.get("verifiable") or {}).get("ifeval") or {}
    if not verifiable.get("models"):
        return None
    models = {label: {k: m[k] for k in ("value", "ci", "n", "length_words_mean", "rm_score")}
              for label, m in per_model(results).items() if label in verifiable["models"]}
    paired = {name: {"diff": p["diff"], "ci": p["ci"], "n": p["n"], "mcnemar_p": p.get("mcnemar_p")}
              for name, p in (verifiable.get("paired") or {}).items()}
    gate = results.get("judge_gate") or {}
    return {"gold_metric": f"{GOLD_METRIC} (held-out, {verifiable.get('n_prompts', 0)} prompts)",
            "confidence": results.get("confidence", 0.95), "models": models, "paired": paired,
            "judge_gate": {"checked": bool(gate.get("checked")), "passed": gate.get("passed")}}
