"""MT-bench judged the FastChat way: single-answer grading 1-10 per turn (math, reasoning and
coding against the GPT-4 reference answers) and pairwise comparison between models in both
orders; then per-model, per-turn and per-category tables."""

from __future__ import annotations

import math
from itertools import combinations
from statistics import mean

from xwin.data.mtbench import NEED_REFERENCE_CATEGORIES, MTBenchQuestion
from xwin.judge.client import JudgeClient
from xwin.judge.judging import compare_swapped, grade
from xwin.judge.prompts import mtbench_pair, mtbench_single
from xwin.judge.stats import paired_bootstrap, win_rate
from xwin.judge.verdicts import Outcome, swap_agreement

Answers = dict[str, dict[int, list[str]]]  # model label -> question_id -> answer per turn


def reference_for(question: MTBenchQuestion) -> list[str] | None:
    if question.category in NEED_REFERENCE_CATEGORIES and question.reference:
        return question.reference
    return None


def _turns(question: MTBenchQuestion, answers: list[str], max_turn: int) -> range:
    return range(1, min(len(question.turns), len(answers), max_turn) + 1)


def grade_single(client: JudgeClient, questions: list[MTBenchQuestion], answers: Answers,
                 max_turn: int = 2, extra: dict | None = None) -> list[dict]:
    """One record per (model, question, turn) with the rating (None if unparseable)."""
    jobs, requests = [], []
    for model, by_question in answers.items():
        for q in questions:
            for turn in _turns(q, by_question[q.question_id], max_turn):
                jobs.append((model, q, turn))
                requests.append(mtbench_single(q.turns, by_question[q.question_id], turn,
                                               reference_for(q)))
    grades = grade(client, requests, extra, desc="MT-bench single")
    return [{"kind": "mtbench_single", "model": model, "question_id": q.question_id,
             "category": q.category, "turn": turn, "rating": g.rating, "status": g.status,
             "judgment": g.judgment, "error": g.error}
            for (model, q, turn), g in zip(jobs, grades)]


def _mean(values: list[float]) -> float:
    return mean(values) if values else math.nan


def summarize_single(records: list[dict], models: list[str]) -> dict[str, dict]:
    """Per model: overall mean rating, mean per turn and per category, and counts."""
    out = {}
    for model in models:
        mine = [r for r in records if r["model"] == model]
        rated = [r for r in mine if r["rating"] is not None]
        turns = sorted({r["turn"] for r in mine})
        categories = sorted({r["category"] for r in mine})
        out[model] = {
            "score": _mean([r["rating"] for r in rated]),
            "turns": {str(t): _mean([r["rating"] for r in rated if r["turn"] == t]) for t in turns},
            "categories": {c: _mean([r["rating"] for r in rated if r["category"] == c])
                           for c in categories},
            "judged": len(mine),
            "rated": len(rated),
            "unparseable": sum(r["status"] == "unparseable" for r in mine),
            "errors": sum(r["status"] == "error" for r in mine),
        }
    return out


def paired_single(records: list[dict], models: list[str], confidence: float = 0.95,
                  samples: int = 1000, seed: int = 0) -> list[dict]:
    """Per model pair, the difference of their mean grades on the same (question, turn) items
    with a paired bootstrap interval; items either model has no rating for are left out."""
    ratings = {(r["model"], r["question_id"], r["turn"]): r["rating"] for r in records}
    items = sorted({(r["question_id"], r["turn"]) for r in records})
    return [{"model_x": x, "model_y": y,
             **paired_bootstrap([ratings.get((x, *i)) for i in items],
                                [ratings.get((y, *i)) for i in items], confidence, samples, seed)}
            for x, y in combinations(models, 2)]


def compare_models(client: JudgeClient, questions: list[MTBenchQuestion], answers: Answers,
                   max_turn: int = 2, extra: dict | None = None) -> list[dict]:
    """Every pair of models on every question and turn, each in both orders."""
    jobs, pairs = [], []
    for x, y in combinations(list(answers), 2):
        for q in questions:
            ax, ay = answers[x][q.question_id], answers[y][q.question_id]
            ref = reference_for(q)
            for turn in _turns(q, ax, max_turn):
                if turn > len(ay):
                    continue
                jobs.append((x, y, q, turn))
                pairs.append((mtbench_pair(q.turns, ax, ay, turn, ref),
                              mtbench_pair(q.turns, ay, ax, turn, ref)))
    comparisons = compare_swapped(client, pairs, extra, desc="MT-bench pairwise")
    return [{"kind": "mtbench_pairwise", "model_x": x, "model_y": y,
             "question_id": q.question_id, "category": q.category, "turn": turn, **c.record()}
            for (x, y, q, turn), c in zip(jobs, comparisons)]


def summarize_pairwise(records: list[dict], confidence: float = 0.95, interval: str = "wilson",
                       bootstrap_samples: int = 1000, seed: int = 0) -> list[dict]:
    """Win rate of model_x over model_y per model pair, with its interval and the judge's
    agreement with itself under position swap."""
    out = []
    for x, y in dict.fromkeys((r["model_x"], r["model_y"]) for r in records):
        outcomes = [Outcome(r["outcome"]) for r in records
                    if r["model_x"] == x and r["model_y"] == y]
        out.append({"model_x": x, "model_y": y,
                    **win_rate(outcomes, confidence, interval, bootstrap_samples, seed),
                    "swap_agreement": swap_agreement(outcomes)})
    return out
