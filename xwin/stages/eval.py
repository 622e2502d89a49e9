"""Stage `eval`: judged benchmarks for every model under evaluation (SFT, RS, DPO, any HF
folder), as Xwin-LM measures each stage.

1. Answers: each model answers MT-bench (two turns, turn 2 after its own turn-1 answer), the
   AlpacaEval-format instructions and the plain eval prompts, through the sample stage's engine.
2. The judge gate (judge/calibration.py): before any judged number is believed, the judge
   compares GPT-4 reference answers with known-worse foils in both orders; its accuracy there,
   its agreement with itself under position swap and its share of unparseable replies are
   checked against eval.judge_gate's thresholds. A failed gate stops nothing, but results.json
   (`judge_gate`), report.md ("judge unreliable", judged tables under the warning) and the
   metrics (`judge/gate_passed` = 0) say so.
3. MT-bench: single-answer grades 1-10 per turn (math/reasoning/coding against reference
   answers) and pairwise comparisons between models, each pair judged in both orders.
4. AlpacaEval-style: each model against a reference model's outputs, both orders; win rate with
   ties counted half, its interval, and the length-controlled win rate.
5. Reward model (optional input): mean RM score of each model's answers.

Output: results.json, report.md (a fragment of the run report), judgments.jsonl,
calibration.jsonl (the judge gate's comparisons), answers/, PNG plots. Judge replies and
answers are cached in the workdir: a rerun asks and generates nothing.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from xwin.artifacts.stage_io import StageContext
from xwin.core.config import StrictModel
from xwin.core.errors import ConfigError
from xwin.core.files import write_text_atomically
from xwin.data.io import read_records, write_records
from xwin.data.schemas import Prompt
from xwin.judge.config import JudgeConfig, JudgeGateConfig
from xwin.sampling.generation import EngineOptions, GenerationParams

log = logging.getLogger(__name__)

# Input names with a fixed meaning; every other input is a model under evaluation, labelled by
# its name (`model:sft` and the controller's plain `sft` both give the label "sft").
RESERVED_INPUTS = frozenset({"judge", "mtbench", "alpaca", "reference", "prompts", "reward_model"})
REWARD_MAX_LENGTH = 4096  # tokens of one scored answer in its context; longer ones are cut
# Reward scoring runs in float32, where its backend and batching move a reward by ~1e-5 (the
# score stage's docstring): these fields are left out of eval's key.
REWARD_EXECUTION_FIELDS = frozenset({"reward_backend", "reward_batch_size", "reward_max_batch_tokens",
                                     "reward_tensor_parallel_size"})


class VerifiableEvalConfig(StrictModel):
    """The gold metric: verifiable instruction following, checked by program (xwin.judge.ifeval)."""

    prompts: bool = Field(True, description="answer and check the `prompts` input's prompts that "
                          "carry constraints (the held-out set prepare.constraints builds)")
    ifbench: bool = Field(False, description="also answer and check the packaged IFBench_test "
                          "(out of distribution: instruction types no training prompt has)")
    ifbench_max_prompts: int | None = Field(None, ge=1, description="IFBench_test: the first N")


class MtBenchConfig(StrictModel):
    enabled: bool = Field(True, description="answer and judge MT-bench")
    question_ids: list[int] = Field(default_factory=list, description="only these questions")
    categories: list[str] = Field(default_factory=list, description="only these categories")
    max_questions: int | None = Field(None, ge=1, description="the first N questions left")
    turns: int = Field(2, ge=1, le=2, description="judge turn 1 only, or both turns")
    single: bool = Field(True, description="single-answer grading 1-10")
    pairwise: bool = Field(True, description="pairwise comparison between models (>= 2 models)")


class EvalConfig(StrictModel):
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    judge_gate: JudgeGateConfig = Field(
        default_factory=JudgeGateConfig, description="check the judge on a calibration set "
        "before its verdicts are reported as results (thresholds, calibration size)")
    engine: EngineOptions = Field(
        default_factory=EngineOptions, description="how answers are generated (the sample "
        "stage's engine: vllm or hf)")
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(temperature=0.0, max_new_tokens=1024),
        description="answer sampling; greedy by default (FastChat uses per-category "
        "temperatures; one greedy setting keeps answers reproducible and cacheable)")
    mtbench: MtBenchConfig = Field(default_factory=MtBenchConfig)
    verifiable: VerifiableEvalConfig = Field(default_factory=VerifiableEvalConfig)
    alpaca_max_instructions: int | None = Field(
        None, ge=1, description="AlpacaEval input: use the first N instructions")
    max_prompts: int | None = Field(None, ge=1, description="prompts input: the first N")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of intervals")
    interval: Literal["wilson", "bootstrap"] = Field(
        "wilson", description="win-rate interval: Wilson score or percentile bootstrap")
    bootstrap_samples: int = Field(1000, ge=100)
    seed: int = Field(0, description="bootstrap seed")
    reward_batch_size: int = Field(8, ge=1, description="hf: reward model scoring batch size, at most")
    reward_max_batch_tokens: int = Field(
        16384, ge=16, description="reward scoring: padded tokens per hf batch, at most; vLLM's "
        "max_num_batched_tokens")
    reward_backend: Literal["auto", "hf", "vllm"] = Field(
        "hf", description="reward scoring (in float32): hf, vllm (vLLM's pooling runner) or auto "
        "(vllm where installed and it runs the model, else hf); results.json says which")
    reward_tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs the reward model is split over")


def model_inputs(ctx: StageContext) -> dict[str, Path]:
    models = {}
    for name in ctx.spec.inputs:
        if name not in RESERVED_INPUTS:
            label = name.removeprefix("model:")
            if not label:
                raise ConfigError(f"input {name!r}: name the model, e.g. model:sft")
            models[label] = ctx.input(name)
    if not models:
        raise ConfigError("stage eval: no model to evaluate; add inputs like `model:sft: <key>`")
    return models


def load_questions(config: MtBenchConfig, ctx: StageContext):
    from xwin.data.mtbench import load_mtbench_questions

    if "mtbench" not in ctx.spec.inputs:
        questions = load_mtbench_questions()
    else:
        path = ctx.input("mtbench")
        if path.is_dir():  # FastChat's folder layout, or a dataset artifact of one file
            files = [path / "question.jsonl"] if (path / "question.jsonl").exists() \
                else sorted(path.glob("*.jsonl"))
            if len(files) != 1:
                raise ConfigError(f"input mtbench = {path}: expected question.jsonl or one "
                                  f"*.jsonl file, found {len(files)}")
            path = files[0]
        questions = load_mtbench_questions(path)  # FastChat's format or typed records
    if config.question_ids:
        questions = [q for q in questions if q.question_id in set(config.question_ids)]
    if config.categories:
        questions = [q for q in questions if q.category in set(config.categories)]
    questions = questions[: config.max_questions]
    if not questions:
        raise ConfigError("eval.mtbench: no question left after question_ids/categories")
    return questions


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in prompt.messages]


def generate_answers(config: EvalConfig, models: dict[str, Path], questions, alpaca_items,
                     prompts: list[Prompt], cache_path: Path, ifbench=()) -> tuple[dict, dict]:
    """answers[label] = {"mtbench": {qid: [turns]}, "alpaca": [...], "prompts": [...],
    "ifbench": [...]}."""
    from xwin.judge.answers import CachedAnswerer, answer_multi_turn
    from xwin.judge.cache import ResponseCache

    answers, counts = {}, {"generated": 0, "cache_hits": 0}
    with ResponseCache(cache_path) as cache:
        for label, path in models.items():
            with CachedAnswerer(path, config.engine, config.generation, cache) as answerer:
                mine: dict = {}
                if questions:
                    turns = answer_multi_turn(answerer, [q.turns[: config.mtbench.turns]
                                                         for q in questions])
                    mine["mtbench"] = {q.question_id: a for q, a in zip(questions, turns)}
                if alpaca_items:
                    contexts = [[{"role": "user", "content": it.prompt}] for it in alpaca_items]
                    mine["alpaca"] = [t[0] for t in answerer.answer(contexts)]
                if prompts:
                    mine["prompts"] = [t[0] for t in answerer.answer([_messages(p) for p in prompts])]
                if ifbench:
                    contexts = [[{"role": "user", "content": item.prompt}] for item in ifbench]
                    mine["ifbench"] = [t[0] for t in answerer.answer(contexts)]
                answers[label] = mine
                counts["generated"] += answerer.generated
                counts["cache_hits"] += answerer.cache_hits
    return answers, counts


def reward_scores(config: EvalConfig, rm_path: Path, answers: dict, questions, alpaca_items,
                  prompts: list[Prompt]) -> dict[str, dict]:
    """Mean reward-model score of every answer a model gave, each scored in its context (an
    MT-bench turn-2 answer after the model's own turn 1)."""
    from xwin.models.loading import load_tokenizer
    from xwin.models.scorer_factory import ScorerOptions, open_reward_scorer

    # the judge server and every answering engine are closed by now: the GPU is the RM's
    options = ScorerOptions(backend=config.reward_backend, dtype="float32", max_length=REWARD_MAX_LENGTH,
                            batch_size=config.reward_batch_size, max_batch_tokens=config.reward_max_batch_tokens,
                            tensor_parallel_size=config.reward_tensor_parallel_size)
    with open_reward_scorer(rm_path, options) as (scorer, why):
        return _reward_scores(scorer, why, load_tokenizer(rm_path), answers, questions, alpaca_items, prompts)


def _reward_scores(scorer, why: str, tokenizer, answers: dict, questions, alpaca_items,
                   prompts: list[Prompt]) -> dict[str, dict]:
    from xwin.models.reward import reward_sequences

    out = {}
    for label, mine in answers.items():
        contexts, replies = [], []
        for q in questions:
            history: list[dict[str, str]] = []
            for question, answer in zip(q.turns, mine.get("mtbench", {}).get(q.question_id, [])):
                history = history + [{"role": "user", "content": question}]
                contexts.append(history)
                replies.append(answer)
                history = history + [{"role": "assistant", "content": answer}]
        for item, answer in zip(alpaca_items, mine.get("alpaca", [])):
            contexts.append([{"role": "user", "content": item.prompt}])
            replies.append(answer)
        for prompt, answer in zip(prompts, mine.get("prompts", [])):
            contexts.append(_messages(prompt))
            replies.append(answer)
        scores = scorer.score(reward_sequences(tokenizer, contexts, replies, REWARD_MAX_LENGTH))
        held_out = scores[len(scores) - len(mine.get("prompts", [])):]  # prompts come last
        out[label] = {"mean": sum(scores) / len(scores) if scores else float("nan"),
                      "n": len(scores), "scores": [float(x) for x in scores],
                      "prompts_mean": sum(held_out) / len(held_out) if held_out else float("nan"),
                      "prompts_n": len(held_out), "backend": scorer.backend, "backend_reason": why}
    return out


def paired_rewards(config: EvalConfig, reward: dict[str, dict]) -> list[dict]:
    """Per model pair, the difference of their mean RM scores over the same answers' contexts
    (every model answers the same questions, instructions and prompts, in the same order),
    with a paired bootstrap interval."""
    from itertools import combinations

    from xwin.judge.stats import paired_bootstrap

    return [{"model_x": x, "model_y": y,
             **paired_bootstrap(reward[x]["scores"], reward[y]["scores"], config.confidence,
                                config.bootstrap_samples, config.seed)}
            for x, y in combinations(reward, 2)]


def _finite(obj):
    """NaN (a mean of nothing: every verdict unparseable) as null: strict JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _write_json(path: Path, obj) -> None:
    write_text_atomically(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=str))


def judge_answers(judge, config: EvalConfig, questions, alpaca_items, references,
                  answers: dict) -> tuple[dict, list[dict]]:
    """All judged benchmarks: (summaries for results.json, one record per judgment)."""
    from xwin.judge import alpaca as alpaca_eval
    from xwin.judge import mtbench
    from xwin.judge.session import request_extra

    results: dict = {}
    records: list[dict] = []
    stats_args = (config.confidence, config.interval, config.bootstrap_samples, config.seed)
    single_extra = request_extra(config.judge, "single")
    pair_extra = request_extra(config.judge, "pairwise")
    if questions:
        by_model = {m: a["mtbench"] for m, a in answers.items()}
        results["mtbench"] = {}
        if config.mtbench.single:
            graded = mtbench.grade_single(judge, questions, by_model, config.mtbench.turns,
                                          single_extra)
            records += graded
            results["mtbench"]["single"] = mtbench.summarize_single(graded, list(answers))
            if len(answers) >= 2:
                results["mtbench"]["single_paired"] = mtbench.paired_single(
                    graded, list(answers), config.confidence, config.bootstrap_samples, config.seed)
        if config.mtbench.pairwise and len(answers) >= 2:
            compared = mtbench.compare_models(judge, questions, by_model, config.mtbench.turns,
                                              pair_extra)
            records += compared
            results["mtbench"]["pairwise"] = mtbench.summarize_pairwise(compared, *stats_args)
    if alpaca_items:
        compared = alpaca_eval.compare_to_reference(
            judge, alpaca_items, references, {m: a["alpaca"] for m, a in answers.items()},
            pair_extra)
        records += compared
        results["alpaca"] = alpaca_eval.summarize_alpaca(compared, *stats_args)
        if len(answers) >= 2:
            results["alpaca_paired"] = alpaca_eval.paired_alpaca(
                compared, config.confidence, config.bootstrap_samples, config.seed)
    return results, records


def run(config: EvalConfig, ctx: StageContext) -> dict[str, float]:
    from xwin.judge import alpaca as alpaca_eval
    from xwin.judge import report
    from xwin.judge.calibration import calibrate, gate_results
    from xwin.judge.ifeval import verifiable_results
    from xwin.judge.session import open_judge
    from xwin.judge.verdicts import Outcome, swap_agreement

    started = time.monotonic()
    calibration_items = []
    if config.judge_gate.enabled:  # built first: a bad size fails before answers cost anything
        from xwin.judge.calibration import calibration_set

        calibration_items = calibration_set(config.judge_gate)
    models = model_inputs(ctx)
    questions = load_questions(config.mtbench, ctx) if config.mtbench.enabled else []
    alpaca_items, references = [], []
    if "alpaca" in ctx.spec.inputs:
        alpaca_items = alpaca_eval.load_alpaca(ctx.input("alpaca"))[: config.alpaca_max_instructions]
        ref_source = ctx.input("reference" if "reference" in ctx.spec.inputs else "alpaca")
        ref_items = alpaca_eval.load_alpaca(ref_source) if "reference" in ctx.spec.inputs else None
        references = alpaca_eval.reference_outputs(alpaca_items, ref_items, str(ref_source))
    elif "reference" in ctx.spec.inputs:
        raise ConfigError("stage eval: input `reference` needs the instructions input `alpaca`")
    prompts: list[Prompt] = []
    if "prompts" in ctx.spec.inputs:
        prompts = list(read_records(ctx.input("prompts"), Prompt))[: config.max_prompts]
        checkable = config.verifiable.prompts and any(p.constraints for p in prompts)
        if not checkable and "reward_model" not in ctx.spec.inputs:
            log.info("eval: input `prompts` has no constraints to check and no reward_model "
                     "to score answers with; not answered")
            prompts = []
    ifbench = []
    if config.verifiable.ifbench:
        from xwin.judge.verifiable import load_ifbench_test

        ifbench = list(load_ifbench_test())[: config.verifiable.ifbench_max_prompts]
    judged = bool(questions or alpaca_items)
    if not (judged or prompts or ifbench):
        raise ConfigError("stage eval: nothing to evaluate (mtbench.enabled is off, no alpaca "
                          "input, no constraint prompts or reward model, verifiable.ifbench off)")
    # nothing judged (the gold metric alone): no judge to check, so no judge server starts
    gate = config.judge_gate if judged else config.judge_gate.model_copy(update={"enabled": False})
    judge_input = ctx.input("judge") if "judge" in ctx.spec.inputs else None
    judge_name = Path(ctx.spec.inputs["judge"].replace("#", "/")).name if judge_input else None

    out = ctx.workdir / "output"
    shutil.rmtree(out, ignore_errors=True)
    (out / "answers").mkdir(parents=True)
    # Entered first so a judge misconfiguration fails before answers cost anything; a local
    # server starts only on the first judge request the cache cannot answer.
    with open_judge(config.judge, workdir=ctx.workdir, model_path=judge_input,
                    name=judge_name) as judge:
        answers, answer_counts = generate_answers(config, models, questions, alpaca_items,
                                                  prompts, ctx.workdir / "answers-cache.sqlite",
                                                  ifbench)
        for label, mine in answers.items():
            _write_json(out / "answers" / f"{label}.json", mine)
        calibration, calibration_records = calibrate(judge, config.judge, gate, calibration_items)
        results, records = judge_answers(judge, config, questions, alpaca_items, references,
                                         answers)
        outcomes = [Outcome(r["outcome"]) for r in records if "outcome" in r]
        verdicts = count_verdicts(records)
        results["judge"] = {
            "model": judge.model, "base_url": config.judge.base_url or "local vLLM server",
            "server_started": judge.connected and not config.judge.base_url,
            "stats": judge.stats.as_dict(), **verdicts,
            "swap_agreement": swap_agreement(outcomes),
        }
    results["judge_gate"] = gate_results(gate, calibration, outcomes, verdicts)
    results["verifiable"] = verifiable_results(prompts, ifbench, answers, config.confidence,
                                               config.bootstrap_samples, config.seed)
    if "reward_model" in ctx.spec.inputs:
        results["reward"] = reward_scores(config, ctx.input("reward_model"), answers, questions,
                                          alpaca_items, prompts)
        if len(answers) >= 2:
            results["reward_paired"] = paired_rewards(config, results["reward"])

    results.update(models={m: str(p) for m, p in models.items()}, answers=answer_counts,
                   confidence=config.confidence)
    results["plots"] = write_plots(results, out, report)
    results["wall_time_s"] = round(time.monotonic() - started, 1)
    write_records(out / "judgments.jsonl", records)
    if calibration_records:
        write_records(out / "calibration.jsonl", calibration_records)
    _write_json(out / "results.json", results)
    (out / "report.md").write_text(report.markdown(results))
    metrics = eval_metrics(results)
    ctx.commit(out, metrics)
    return metrics


def count_verdicts(records: list[dict]) -> dict[str, int]:
    """Judge replies, those without a parseable verdict (refused requests not counted), and
    the requests the endpoint refused."""
    single = [r for r in records if "rating" in r]
    paired = [r for r in records if "outcome" in r]
    refused = sum(r["status"] == "error" for r in single) + sum(r["errors"] for r in paired)
    unparseable = sum(r["status"] == "unparseable" for r in single) + sum(
        (r["verdict_x_first"] is None) + (r["verdict_y_first"] is None) - r["errors"]
        for r in paired)
    return {"verdicts": len(single) + 2 * len(paired), "unparseable": unparseable,
            "refused": refused}


def write_plots(results: dict, out: Path, report) -> list[str]:
    plots = []
    note = "judge unreliable: not results" if report.gate_failed(results) else None
    single = results.get("mtbench", {}).get("single")
    if single:
        report.plot_mtbench(single, out / "mtbench_scores.png", note)
        plots.append("mtbench_scores.png")
    rows = [(f"{p['model_x']} vs {p['model_y']} (MT-bench)", p)
            for p in results.get("mtbench", {}).get("pairwise", [])]
    rows += [(f"{m} vs reference (AlpacaEval)", a) for m, a in results.get("alpaca", {}).items()]
    if rows:
        report.plot_win_rates(rows, out / "win_rates.png", results["confidence"], note)
        plots.append("win_rates.png")
    return plots


def eval_metrics(results: dict) -> dict[str, float]:
    """The manifest's metrics: one number per name."""
    m: dict[str, float] = {}
    for label, s in results.get("mtbench", {}).get("single", {}).items():
        m[f"mtbench/{label}/score"] = s["score"]
        m[f"mtbench/{label}/unparseable"] = s["unparseable"]
    for p in results.get("mtbench", {}).get("pairwise", []):
        m[f"mtbench/{p['model_x']}_vs_{p['model_y']}/win_rate"] = p["win_rate"]
    for label, a in results.get("alpaca", {}).items():
        m[f"alpaca/{label}/win_rate"] = a["win_rate"]
        m[f"alpaca/{label}/lc_win_rate"] = a["lc_win_rate"]
    for label, r in results.get("reward", {}).items():
        m[f"reward/{label}/mean"] = r["mean"]
    judge = results["judge"]
    m.update({f"judge/{k}": v for k, v in judge["stats"].items()})
    m["judge/unparseable"] = judge["unparseable"]
    m["judge/server_started"] = float(judge["server_started"])
    if judge["swap_agreement"] is not None:
        m["judge/swap_agreement"] = judge["swap_agreement"]
    gate = results["judge_gate"]
    if gate["checked"]:
        m["judge/gate_passed"] = float(gate["passed"])
        for name in ("calibration_accuracy", "unparseable_share"):
            if gate[name] is not None:
                m[f"judge/{name}"] = gate[name]
        if gate["swap_agreement"] is not None:
            m["judge/calibration_swap_agreement"] = gate["swap_agreement"]
        m["judge/calibration_requests"] = gate["calibration"]["requests"]
        m["judge/calibration_s"] = gate["calibration"]["seconds"]
    for name, result in results.get("verifiable", {}).items():
        for label, s in result["models"].items():
            for level in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
                m[f"{name}/{label}/{level}"] = s[level]["value"]
            m[f"{name}/{label}/length_words_mean"] = s["length_words"]["mean"]
        for pair, p in result["paired"].items():
            m[f"{name}/{pair}/diff"] = p["diff"]
    m["answers/generated"] = results["answers"]["generated"]
    m["wall_time_s"] = results["wall_time_s"]
    return {k: float(v) for k, v in m.items() if math.isfinite(v)}
