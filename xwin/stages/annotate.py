"""Stage `annotate`: Xwin-Pair-style preference data labelled by a judge model.

For each context (multi-turn allowed) take two or more responses (from a multiwise file, or
sampled from a model), let the judge either grade each response 1-10 or compare every pair in
both orders, and keep a (chosen, rejected) pair only when the judge clearly prefers one: ties
and order-dependent (inconsistent) verdicts are dropped and counted. The judge's scores and
rationale travel with each pair.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Literal

from pydantic import Field

from xwin.artifacts.stage_io import StageContext
from xwin.core.config import StrictModel
from xwin.core.errors import ConfigError
from xwin.core.files import write_text_atomically
from xwin.data.io import read_records, write_records
from xwin.data.schemas import MultiwiseRecord, PreferencePair, Prompt, Response
from xwin.judge.config import JudgeConfig
from xwin.sampling.generation import EngineOptions, GenerationParams

log = logging.getLogger(__name__)



class AnnotateConfig(StrictModel):
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    method: Literal["pairwise", "single"] = Field(
        "pairwise", description="pairwise: compare two responses in both orders; single: grade "
        "each response 1-10 and pair them by grade")
    max_responses: int = Field(2, ge=2, description="distinct responses judged per context")
    single_pairing: Literal["best_worst", "all"] = Field(
        "best_worst", description="single: one pair (top vs bottom grade) or every pair of "
        "different grades")
    min_score_gap: float = Field(
        0.0, ge=0, description="single: grades this close (or equal) are a tie and dropped")
    max_contexts: int | None = Field(None, ge=1, description="only the first N contexts")
    num_samples: int = Field(2, ge=2, description="model input: responses sampled per prompt")
    engine: EngineOptions = Field(default_factory=EngineOptions,
                                  description="model input: the sample stage's engine")
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(temperature=0.8, max_new_tokens=512),
        description="model input: sampling (temperature > 0, or every response is the same)")


def _distinct(responses: list[str], limit: int) -> list[str]:
    seen = dict.fromkeys(r.strip() for r in responses if r.strip())
    return list(seen)[:limit]


def load_contexts(config: AnnotateConfig, ctx: StageContext) -> list[MultiwiseRecord]:
    """This shard's multiwise records: from a file, or its prompts answered by the model."""
    def mine(items: list) -> list:  # the first max_contexts, then every shard_count-th
        return items[: config.max_contexts][ctx.shard_index:: ctx.shard_count]

    source = next((n for n in ("responses", "samples") if n in ctx.spec.inputs), None)
    if source:
        return mine([r for part in ctx.input_parts(source)
                     for r in read_records(part, MultiwiseRecord)])
    if "prompts" not in ctx.spec.inputs or "model" not in ctx.spec.inputs:
        raise ConfigError("stage annotate: give input `responses` (multiwise records), or "
                          "`prompts` and `model` to sample responses from")
    if config.generation.temperature == 0:
        raise ConfigError("annotate.generation.temperature: 0 samples one response only")
    from xwin.judge.answers import CachedAnswerer
    from xwin.judge.cache import ResponseCache

    prompts = mine(list(read_records(ctx.input("prompts"), Prompt)))
    contexts = [[m.model_dump() for m in p.messages] for p in prompts]
    with ResponseCache(ctx.workdir / "answers-cache.sqlite") as cache, CachedAnswerer(
            ctx.input("model"), config.engine, config.generation, cache) as answerer:
        samples = answerer.answer(contexts, n=config.num_samples)
    return [MultiwiseRecord(id=p.id, context=p.messages, meta=p.meta, constraints=p.constraints,
                            responses=[Response(text=t) for t in texts])
            for p, texts in zip(prompts, samples)]


def annotate_single(judge, config, records, extra) -> tuple[list[PreferencePair], Counter, list]:
    from xwin.judge.judging import grade
    from xwin.judge.prompts import context_single

    counts: Counter = Counter()
    jobs = [(k, r, text) for k, r in enumerate(records)
            for text in _distinct([x.text for x in r.responses], config.max_responses)]
    grades = grade(judge, [context_single([m.model_dump() for m in r.context], text)
                           for _, r, text in jobs], extra, desc="grading responses")
    by_record: dict[int, list] = {}
    judgments = []
    for (k, r, text), g in zip(jobs, grades):
        counts[g.status] += 1
        judgments.append({"id": r.id, "response": text, "rating": g.rating, "status": g.status,
                          "judgment": g.judgment})
        if g.rating is not None:
            by_record.setdefault(k, []).append((text, g.rating, g.judgment))
    pairs = []
    for k, r in enumerate(records):
        rated = by_record.get(k, [])
        if len(rated) < 2:
            counts["too_few_rated"] += 1
            continue
        if config.single_pairing == "best_worst":
            candidates = [(max(rated, key=lambda x: x[1]), min(rated, key=lambda x: x[1]))]
        else:
            candidates = [(a, b) if a[1] >= b[1] else (b, a) for a, b in combinations(rated, 2)]
        for n, (best, worst) in enumerate(candidates):
            if best[1] - worst[1] <= config.min_score_gap:
                counts["ties"] += 1
                continue
            pairs.append(PreferencePair(
                id=f"{r.id}-{n}", context=r.context, chosen=best[0], rejected=worst[0],
                chosen_score=best[1], rejected_score=worst[1], source=f"judge:{judge.model}",
                meta={"method": "single", "rationale": {"chosen": best[2], "rejected": worst[2]}}))
    return pairs, counts, judgments


def annotate_pairwise(judge, config, records, extra) -> tuple[list[PreferencePair], Counter, list]:
    from xwin.judge.judging import compare_swapped
    from xwin.judge.prompts import context_pair
    from xwin.judge.verdicts import Outcome

    counts: Counter = Counter()
    jobs = []
    for r in records:
        texts = _distinct([x.text for x in r.responses], config.max_responses)
        if len(texts) < 2:
            counts["too_few_responses"] += 1
        context = [m.model_dump() for m in r.context]
        jobs += [(r, context, texts[i], texts[j]) for i, j in combinations(range(len(texts)), 2)]
    comparisons = compare_swapped(judge, [(context_pair(c, x, y), context_pair(c, y, x))
                                          for _, c, x, y in jobs], extra, desc="comparing pairs")
    pairs, judgments = [], []
    for k, ((r, _, x, y), c) in enumerate(zip(jobs, comparisons)):
        counts[c.outcome.value] += 1
        judgments.append({"id": r.id, "response_x": x, "response_y": y, **c.record()})
        if c.outcome not in (Outcome.WIN, Outcome.LOSS):
            continue
        x_won = c.outcome is Outcome.WIN
        chosen, rejected = (x, y) if x_won else (y, x)
        rationale = {"chosen_as_a": c.judgment_x_first if x_won else c.judgment_y_first,
                     "rejected_as_a": c.judgment_y_first if x_won else c.judgment_x_first}
        # Pairwise verdicts have no grade: the score is the share of the two orders won.
        pairs.append(PreferencePair(
            id=f"{r.id}-{k}", context=r.context, chosen=chosen, rejected=rejected,
            chosen_score=1.0, rejected_score=0.0, source=f"judge:{judge.model}",
            meta={"method": "pairwise", "rationale": rationale}))
    return pairs, counts, judgments


def run(config: AnnotateConfig, ctx: StageContext) -> dict[str, float]:
    from xwin.judge.session import open_judge, request_extra

    judge_input = ctx.input("judge") if "judge" in ctx.spec.inputs else None
    judge_name = Path(ctx.spec.inputs["judge"].replace("#", "/")).name if judge_input else None
    # The judge first: a misconfiguration fails before sampling costs anything; a local
    # server starts only on the first request the cache cannot answer.
    with open_judge(config.judge, workdir=ctx.workdir, model_path=judge_input,
                    name=judge_name) as judge:
        records = load_contexts(config, ctx)
        if not records:
            raise ConfigError("stage annotate: no contexts to annotate")
        annotate = annotate_pairwise if config.method == "pairwise" else annotate_single
        pairs, counts, judgments = annotate(judge, config, records,
                                            request_extra(config.judge, config.method))
        stats = judge.stats.as_dict()
    out = ctx.workdir / "output"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_records(out / "pairs.jsonl", pairs)
    write_records(out / "judgments.jsonl", judgments)
    metrics = {"contexts": len(records), "pairs": len(pairs),
               "ties": counts["ties"] + counts["tie"], "inconsistent": counts["inconsistent"],
               "unparseable": counts["unparseable"] + counts["error"],
               "skipped_contexts": counts["too_few_responses"] + counts["too_few_rated"],
               **{f"judge/{k}": v for k, v in stats.items()}}
    write_text_atomically(out / "summary.json", json.dumps(metrics, indent=2))
    ctx.commit(out, metrics)
    return metrics
