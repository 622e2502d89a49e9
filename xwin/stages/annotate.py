"""Stage `annotate`: Xwin-Pair-style preference data labelled by a judge model, or by the
verifiable constraints the prompts carry.

For each context (multi-turn allowed) take two or more responses (from a multiwise file, or
sampled from a model), then label (chosen, rejected) pairs by `method`:

- pairwise / single: an LLM judge compares every pair in both orders, or grades each response
  1-10; a pair is kept only when the judge clearly prefers one: ties and order-dependent
  (inconsistent) verdicts are dropped and counted. The judge's scores and rationale travel with
  each pair.
- verifiable: no judge model. Every response is checked against its record's `constraints`
  (`xwin.judge.verifiable.check`) and pairs are ranked by compliance
  (`xwin/judge/verifiable_pairs.py`): prompt-level strict, then prompt-level loose, then the
  share of instructions followed strictly, then loosely. A context without constraints is
  skipped and counted. `verifiable_pairing`: best vs worst (default) or every pair.

  The tie rule (`verifiable_ties`, default `auto`): two responses of equal compliance (both
  fully compliant, or exactly tied on all four criteria) are no preference. With `auto` the LLM
  judge decides them through the pairwise path above (both orders; ties and inconsistent
  verdicts dropped) when one is configured: `judge.base_url`, `judge.model_path` or the input
  `judge` (which a pipeline wires by default to the base model: set `drop` there to never
  serve it). With no judge configured, or with `drop`, they are dropped and counted
  (`ties_dropped`); `judge` demands a judge. The judge is opened only when there is a tie to
  decide: without ties no endpoint is called, no judge model fetched, no server started.

  Each pair: `source` "verifiable" (or "verifiable+judge:<model>" for a tie the judge decided),
  `chosen_score`/`rejected_score` the share of instructions followed strictly, and `meta`
  `decided_by` (the deciding criterion, or "judge") and `compliance`: both replies' criteria and
  per-instruction (strict, loose) verdicts. `checks.jsonl` holds every checked response's
  verdicts. Metrics: contexts, contexts_without_constraints, skipped_contexts (fewer than two
  distinct responses), responses_checked and their prompt_strict / prompt_loose /
  instruction_strict / instruction_loose compliance, pairs, pairs_by_judge, ties (tied pairs),
  ties_judged, ties_dropped, and the judge's verdicts on ties: judge_ties, inconsistent,
  unparseable (with judge/* request counts when it was asked).
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
    method: Literal["pairwise", "single", "verifiable"] = Field(
        "pairwise", description="pairwise: the judge compares two responses in both orders; "
        "single: the judge grades each response 1-10 and they are paired by grade; "
        "verifiable: no judge, responses are paired by compliance with their record's "
        "constraints (contexts without constraints are skipped)")
    max_responses: int = Field(2, ge=2,
                               description="distinct responses judged (or checked) per context")
    single_pairing: Literal["best_worst", "all"] = Field(
        "best_worst", description="single: one pair (top vs bottom grade) or every pair of "
        "different grades")
    min_score_gap: float = Field(
        0.0, ge=0, description="single: grades this close (or equal) are a tie and dropped")
    verifiable_pairing: Literal["best_worst", "all"] = Field(
        "best_worst", description="verifiable: one pair per context (the best complying "
        "response against the worst; equal ones keep their order, the earlier ranks higher) or "
        "every pair of responses")
    verifiable_ties: Literal["auto", "judge", "drop"] = Field(
        "auto", description="verifiable: two responses of equal compliance (both fully "
        "compliant, or exactly tied). auto: the LLM judge decides them (pairwise, both orders) "
        "if one is configured (judge.base_url, judge.model_path or the input `judge`; in a "
        "pipeline `judge` is wired by default), else they are dropped; judge: always ask the "
        "judge (none configured is a config error); drop: never ask, drop them. Dropped ties "
        "are counted (ties_dropped)")
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


def _judge_model(ctx: StageContext) -> tuple[Path | None, str | None]:
    """The stage input `judge` (fetched now) and its name, or (None, None)."""
    if "judge" not in ctx.spec.inputs:
        return None, None
    return ctx.input("judge"), Path(ctx.spec.inputs["judge"].replace("#", "/")).name


def judge_breaks_ties(config: AnnotateConfig, ctx: StageContext) -> bool:
    """Whether method verifiable asks the LLM judge about ties (`verifiable_ties`), checked
    before anything is sampled or checked; a judge that cannot be opened is a ConfigError."""
    if config.verifiable_ties == "drop":
        return False
    configured = bool(config.judge.base_url or config.judge.model_path
                      or "judge" in ctx.spec.inputs)
    if not configured:
        if config.verifiable_ties == "judge":
            raise ConfigError("annotate.verifiable_ties: judge needs a judge: set "
                              "judge.base_url, judge.model_path or the input `judge`")
        return False
    if config.judge.base_url and not config.judge.model:
        raise ConfigError("judge.model: required with judge.base_url (the endpoint's model name)")
    return True


def _constraints(record: MultiwiseRecord) -> list:
    from xwin.judge.verifiable import Constraint

    try:
        return [Constraint(**c.model_dump()) for c in record.constraints]
    except ValueError as err:  # pydantic's ValidationError is one
        raise ConfigError(f"stage annotate: record {record.id!r}: a constraint cannot be "
                          f"checked: {err}") from err


def _verifiable_pair(r: MultiwiseRecord, n: int, chosen, rejected, decided_by: str,
                     source: str, **meta) -> PreferencePair:
    """A pair whose scores are the replies' shares of instructions followed strictly and whose
    meta holds both replies' verdicts, instruction by instruction."""
    return PreferencePair(
        id=f"{r.id}-{n}", context=r.context, chosen=chosen.response, rejected=rejected.response,
        chosen_score=chosen.instruction_strict, rejected_score=rejected.instruction_strict,
        source=source, meta={"method": "verifiable", "decided_by": decided_by,
                             "compliance": {"chosen": chosen.record(),
                                            "rejected": rejected.record()}, **meta})


def break_ties(judge, config: AnnotateConfig, ties: list) -> tuple[dict, Counter, list]:
    """Ties (key, record, Candidate) put to the judge in both orders, as method pairwise does:
    {key: pair} for those it decides consistently, its outcome counts and its judgments."""
    from xwin.judge.judging import compare_swapped
    from xwin.judge.prompts import context_pair
    from xwin.judge.session import request_extra
    from xwin.judge.verdicts import Outcome

    requests = []
    for _, r, c in ties:
        context = [m.model_dump() for m in r.context]
        x, y = c.first.response, c.second.response
        requests.append((context_pair(context, x, y), context_pair(context, y, x)))
    comparisons = compare_swapped(judge, requests, request_extra(config.judge, "pairwise"),
                                  desc="judging compliance ties")
    decided, counts, judgments = {}, Counter(), []
    for (key, r, c), cmp in zip(ties, comparisons):
        counts[cmp.outcome.value] += 1
        judgments.append({"id": r.id, "response_x": c.first.response,
                          "response_y": c.second.response, **cmp.record()})
        if cmp.outcome not in (Outcome.WIN, Outcome.LOSS):
            continue
        x_won = cmp.outcome is Outcome.WIN
        chosen, rejected = (c.first, c.second) if x_won else (c.second, c.first)
        rationale = {"chosen_as_a": cmp.judgment_x_first if x_won else cmp.judgment_y_first,
                     "rejected_as_a": cmp.judgment_y_first if x_won else cmp.judgment_x_first}
        decided[key] = _verifiable_pair(r, key[1], chosen, rejected, "judge",
                                        f"verifiable+judge:{judge.model}", rationale=rationale)
    return decided, counts, judgments


def annotate_verifiable(config: AnnotateConfig, ctx: StageContext, records: list[MultiwiseRecord],
                        use_judge: bool) -> tuple[list[PreferencePair], dict[str, float],
                                                  list, list]:
    """Pairs by compliance, ties to the judge when `use_judge`: (pairs, metrics, checks: one row
    per checked response, judgments: the judge's comparisons of ties)."""
    from xwin.judge.verifiable_pairs import assess, compliance_summary, pair_by_compliance

    counts: Counter = Counter()
    checked, checks = [], []
    labelled: dict[tuple[int, int], PreferencePair] = {}  # (record, candidate) -> pair
    ties = []  # ((record, candidate), record, Candidate)
    for k, r in enumerate(records):
        if not r.constraints:
            counts["contexts_without_constraints"] += 1
            continue
        constraints = _constraints(r)
        prompt = r.context[-1].content
        replies = [assess(t, constraints, prompt)
                   for t in _distinct([x.text for x in r.responses], config.max_responses)]
        checked += replies
        checks += [{"id": r.id, "response": c.response, **c.record()} for c in replies]
        if len(replies) < 2:
            counts["too_few_responses"] += 1
            continue
        for n, c in enumerate(pair_by_compliance(replies, config.verifiable_pairing)):
            if c.tied:
                ties.append(((k, n), r, c))
            else:
                labelled[k, n] = _verifiable_pair(r, n, c.first, c.second, c.decided_by,
                                                  "verifiable")
    judgments: list = []
    stats: dict[str, float] = {}
    if ties and use_judge:
        from xwin.judge.session import open_judge

        judge_input, judge_name = _judge_model(ctx)
        with open_judge(config.judge, workdir=ctx.workdir, model_path=judge_input,
                        name=judge_name) as judge:
            decided, outcomes, judgments = break_ties(judge, config, ties)
            stats = {f"judge/{k}": v for k, v in judge.stats.as_dict().items()}
        labelled.update(decided)
        counts.update({f"judge_{k}": v for k, v in outcomes.items()})
    pairs = [labelled[key] for key in sorted(labelled)]  # records' order, then candidates'
    by_judge = sum(p.meta["decided_by"] == "judge" for p in pairs)
    metrics = {
        "contexts": len(records), "pairs": len(pairs), "pairs_by_judge": by_judge,
        "contexts_without_constraints": counts["contexts_without_constraints"],
        "skipped_contexts": counts["too_few_responses"],
        "ties": len(ties), "ties_judged": len(ties) if use_judge else 0,
        "ties_dropped": len(ties) - by_judge,
        "judge_ties": counts["judge_tie"], "inconsistent": counts["judge_inconsistent"],
        "unparseable": counts["judge_error"],
        **compliance_summary(checked), **stats}
    return pairs, metrics, checks, judgments


def annotate_with_judge(config: AnnotateConfig, ctx: StageContext
                        ) -> tuple[list[PreferencePair], dict[str, float], list]:
    """Methods pairwise and single: (pairs, metrics, judgments)."""
    from xwin.judge.session import open_judge, request_extra

    judge_input, judge_name = _judge_model(ctx)
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
    metrics = {"contexts": len(records), "pairs": len(pairs),
               "ties": counts["ties"] + counts["tie"], "inconsistent": counts["inconsistent"],
               "unparseable": counts["unparseable"] + counts["error"],
               "skipped_contexts": counts["too_few_responses"] + counts["too_few_rated"],
               **{f"judge/{k}": v for k, v in stats.items()}}
    return pairs, metrics, judgments


def run(config: AnnotateConfig, ctx: StageContext) -> dict[str, float]:
    checks = None
    if config.method == "verifiable":
        use_judge = judge_breaks_ties(config, ctx)  # a misconfigured judge fails before sampling
        records = load_contexts(config, ctx)
        if not records:
            raise ConfigError("stage annotate: no contexts to annotate")
        pairs, metrics, checks, judgments = annotate_verifiable(config, ctx, records, use_judge)
    else:
        pairs, metrics, judgments = annotate_with_judge(config, ctx)
    out = ctx.workdir / "output"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_records(out / "pairs.jsonl", pairs)
    write_records(out / "judgments.jsonl", judgments)
    if checks is not None:
        write_records(out / "checks.jsonl", checks)
    write_text_atomically(out / "summary.json", json.dumps(metrics, indent=2))
    ctx.commit(out, metrics)
    return metrics
