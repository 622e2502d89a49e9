"""The stage table: one row per stage, in pipeline order, and `run_stage`, how every stage
process starts from its row. Every layer that needs to know the stages reads this table: the
pipeline config (a section per row), the graph (default wiring, what goes into a stage's key),
the Job profiles (kind, image), the report (which stages train, which produce a model) and the
CLI. A test holds the helm chart's stage enum against it.

A row names its config class (torch-free, so the controller can plan a run without torch) and
its entry point as "module:function" (imported by the stage process only). Adding a stage is
its module, its row here and its Job profile (jobs/<name>.yaml); see ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import ValidationError

from xwin.artifacts.stage_io import StageContext, StageSpec, parse_shard
from xwin.core.config import StrictModel, format_validation_error
from xwin.core.errors import ConfigError
from xwin.stages.annotate import AnnotateConfig
from xwin.stages.eval import REWARD_EXECUTION_FIELDS, EvalConfig
from xwin.stages.prepare import PrepareConfig, fingerprint
from xwin.stages.sample import SampleConfig
from xwin.stages.score import ScoreConfig
from xwin.stages.score import key_config as score_key_config
from xwin.stages.select import SelectConfig
from xwin.train.dpo_config import DpoConfig
from xwin.train.rm_config import RmConfig
from xwin.train.sft_config import RsConfig, SftConfig

JobKind = Literal["train", "sharded", "single"]


@dataclass(frozen=True)
class Input:
    """One named input of a stage: where it comes from by default ("<stage>" for that stage's
    whole output, "<stage>#<path inside it>", None for an input only a user wires in through
    `run.inputs`) and what it must hold."""

    source: str | None
    meaning: str


@dataclass(frozen=True)
class StageDef:
    """A stage's identity, as every layer reads it."""

    name: str
    summary: str  # one line, for `xwin stage --help` and the docs
    config: type[StrictModel]  # its section of the pipeline config
    entry: str  # "module:function" called as function(config, ctx) -> metrics
    inputs: Mapping[str, Input]
    kind: JobKind  # train: a gang of ranks; sharded: independent shards; single: one process
    image: Literal["trainer", "sampler"]  # which image its Job runs (executor.images)
    output: Literal["model", "reward_model", "data", "report"]  # "model": a policy to evaluate
    optional: bool = False  # a plain `xwin run` runs it only when named or wired in
    not_in_key: frozenset[str] = frozenset()  # config fields whose change does not rerun it
    # The config as it enters the key, for fields that count only under some settings (score:
    # how rewards are computed counts in bfloat16, not in float32); applied after not_in_key.
    key_view: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)
    code_version: str = "1"  # bump when a release changes what the stage computes
    # Raw sources the stage reads through its config rather than through inputs (prepare's
    # base model and data files): their identity joins the stage's key.
    sources: Callable[[Any], Any] | None = field(default=None, compare=False)

    @property
    def trains(self) -> bool:
        return self.kind == "train"

    def load_entry(self) -> Callable[[Any, Any], dict[str, float] | None]:
        """The stage's run(config, ctx), imported now (it may import torch, vLLM, DeepSpeed)."""
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(module), function)


def _inputs(**inputs: Input) -> Mapping[str, Input]:
    return MappingProxyType(inputs)


_TRAIN_DATA = "conversations JSONL (OpenAI-style messages); loss on assistant turns only"
_PAIRS = "PreferencePair JSONL: a context, a chosen and a rejected reply"


def _trainer(name: str, summary: str, config: type[StrictModel], entry: str, model: Input,
             train: Input, output: Literal["model", "reward_model"] = "model", code_version: str = "1") -> StageDef:
    """A training stage: a gang of ranks in the trainer image, reading `model` and `train`.
    Where its metrics are tracked (MLflow, W&B) changes nothing it computes: not in its key."""
    return StageDef(name, summary, config, entry, _inputs(model=model, train=train),
                    kind="train", image="trainer", output=output, not_in_key=frozenset({"tracking"}),
                    code_version=code_version)

STAGES: tuple[StageDef, ...] = (
    StageDef(
        "prepare", "import the base model and the run's data into the store", PrepareConfig,
        "xwin.stages.prepare:run", _inputs(), kind="single", image="trainer", output="data",
        sources=fingerprint,
    ),
    _trainer(
        "sft", "supervised finetuning on multi-turn conversations (Xwin-LM-SFT)", SftConfig,
        "xwin.train.sft:run",
        model=Input("prepare#base_model", "HF model folder to start from"),
        train=Input("prepare#sft.jsonl", _TRAIN_DATA),
    ),
    _trainer(
        "rm", "reward model: an LM with a scalar head, Bradley-Terry loss (Xwin-RM)", RmConfig,
        "xwin.train.rm:run",
        model=Input("sft", "HF model folder whose body the reward model starts from"),
        train=Input("prepare#pairs.jsonl", _PAIRS),
        output="reward_model",
        code_version="2",  # 2: a standard sequence-classifier folder, a value head without bias
    ),
    StageDef(
        "sample", "N distinct responses per prompt from the SFT model, vLLM (Xwin-Set)",
        SampleConfig, "xwin.stages.sample:run", _inputs(
            model=Input("sft", "HF model folder to sample from"),
            prompts=Input("prepare#prompts.jsonl", "Prompt JSONL"),
        ), kind="sharded", image="sampler", output="data",
    ),
    StageDef(
        "score", "the reward model scores every response (the scored Xwin-Set)", ScoreConfig,
        "xwin.stages.score:run", _inputs(
            reward_model=Input("rm", "reward-model folder"),
            samples=Input("sample", "multiwise JSONL, sharded"),
        ), kind="sharded", image="trainer", output="data", key_view=score_key_config,
    ),
    StageDef(
        "select", "best response per prompt (rs) and chosen/rejected pairs (dpo)",
        SelectConfig, "xwin.stages.select:run", _inputs(
            scored=Input("score", "scored multiwise JSONL, sharded"),
        ), kind="single", image="trainer", output="data",
    ),
    _trainer(
        "rs", "rejection-sampling finetuning on the best-of-N responses (Xwin-LM-RS)", RsConfig,
        "xwin.train.sft:run",
        model=Input("sft", "HF model folder to start from"),
        train=Input("select#rs.jsonl", _TRAIN_DATA),
    ),
    _trainer(
        "dpo", "DPO on ranked pairs against a frozen reference (Xwin-LM-DPO), or reference-free (SimPO)", DpoConfig,
        "xwin.train.dpo:run",
        model=Input("rs", "HF model folder: the policy's start and the reference"),
        train=Input("select#dpo.jsonl", _PAIRS),
    ),
    StageDef(
        "eval", "judged benchmarks (MT-bench, AlpacaEval-style) and RM scores of every model",
        EvalConfig, "xwin.stages.eval:run", _inputs(
            # every input not named below is a model under evaluation, labelled by its name
            sft=Input("sft", "a model under evaluation (label: sft)"),
            rs=Input("rs", "a model under evaluation (label: rs)"),
            dpo=Input("dpo", "a model under evaluation (label: dpo)"),
            reward_model=Input("rm", "reward-model folder: mean RM score of each model's answers"),
            mtbench=Input("prepare#mtbench.jsonl", "MT-bench question JSONL"),
            prompts=Input("prepare#eval_prompts.jsonl", "held-out Prompt JSONL"),
            # the demo's small local judge; a hosted judge: eval.judge.base_url
            judge=Input("prepare#base_model", "HF model folder served as the local judge"),
            alpaca=Input(None, "AlpacaEval-format instructions JSON/JSONL"),
            reference=Input(None, "the reference model's outputs for AlpacaEval"),
        ), kind="single", image="sampler", output="report", not_in_key=REWARD_EXECUTION_FIELDS,
    ),
    StageDef(
        "annotate", "a judge model or the verifiable checkers label response pairs (Xwin-Pair)",
        AnnotateConfig,
        "xwin.stages.annotate:run", _inputs(
            samples=Input("sample", "multiwise JSONL whose responses are compared (method "
                          "verifiable: checked against each record's constraints)"),
            judge=Input("prepare#base_model", "HF model folder served as the local judge "
                        "(method verifiable: served only to decide compliance ties)"),
            responses=Input(None, "multiwise JSONL (instead of samples)"),
            prompts=Input(None, "Prompt JSONL, answered by `model` (instead of samples)"),
            model=Input(None, "HF model folder that answers `prompts`"),
        ), kind="single", image="sampler", output="data", optional=True,
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


def stage_def(name: str) -> StageDef:
    """The row of stage `name`; an unknown name is a ConfigError that lists the stages."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}") from None


def default_wiring() -> dict[str, dict[str, str]]:
    """stage -> input -> default source, for the inputs that have one."""
    return {stage.name: {name: i.source for name, i in stage.inputs.items() if i.source}
            for stage in STAGES}


def run_stage(name: str, spec_path: Path, shard: str | None = None) -> dict[str, float]:
    """`xwin stage NAME --config SPEC`, the one way a stage starts, in a container or a local
    process alike: validate the spec's config section against the row's config class, open the
    stage's view of the store and call the row's entry point. Bad input is a UserError."""
    stage = stage_def(name)
    spec = StageSpec.from_file(spec_path)
    if spec.stage != name:
        raise ConfigError(f"{spec_path}: spec is for stage {spec.stage!r}, not {name!r}")
    try:
        config = stage.config.model_validate(spec.config)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{spec_path} [{name}]")) from e
    ctx = StageContext(spec, parse_shard(shard, spec.shards))
    return stage.load_entry()(config, ctx) or {}
