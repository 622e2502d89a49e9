"""The pipeline graph and the plan of one run.

Every stage reads named inputs; each input comes from another stage's output (optionally a path
inside it: `prepare#sft.jsonl`). A stage's output key is a content address,
`<stage>/<digest(stage config, its inputs' digests, code version)>`, so

- a stage that already ran with the same config on the same inputs is found in the store and
  never runs twice, in this run or any other;
- changing one stage's config changes its key and, through the input digests, the keys of every
  stage downstream of it, and of nothing else.

Planning decides, for every stage, whether it runs, is reused from the store, is supplied by the
user (`run.artifacts`), or is left out; it never touches a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import xwin
from xwin.artifacts.stage_io import part_key
from xwin.core.digests import digest, fingerprint_path
from xwin.core.errors import ConfigError
from xwin.stages.registry import STAGE_NAMES, STAGES, default_wiring, stage_def
from xwin.train.config import TrainConfig

# Where each input of each stage comes from: "<stage>" (its whole output) or
# "<stage>#<path inside it>"; the stage table's default wiring, rewired by `run.inputs`.
DEFAULT_EDGES: dict[str, dict[str, str]] = default_wiring()

# Stages a plain `xwin run` runs; the others run when named (`--only annotate`) or when an
# input is wired to them (`run.inputs: {rm.train: annotate#pairs.jsonl}`).
OPTIONAL_STAGES = frozenset(stage.name for stage in STAGES if stage.optional)

Decision = Literal["run", "cached", "supplied", "skipped"]


@dataclass
class PlannedStage:
    name: str
    key: str  # the output key (content address), or the supplied key/path
    inputs: dict[str, str]  # input name -> artifact key (`key#inside`) or local path
    config: dict[str, Any]
    config_digest: str
    shards: int = 1
    decision: Decision = "run"
    depends_on: list[str] = field(default_factory=list)


@dataclass
class Plan:
    stages: dict[str, PlannedStage]  # in pipeline order

    def to_run(self) -> list[PlannedStage]:
        return [s for s in self.stages.values() if s.decision == "run"]

    def keys(self) -> dict[str, str]:
        return {name: s.key for name, s in self.stages.items()}


def split_source(source: str) -> tuple[str, str]:
    stage, _, inside = source.partition("#")
    return stage, inside


def edges_for(overrides: dict[str, str]) -> dict[str, dict[str, str]]:
    """DEFAULT_EDGES with `run.inputs` applied: `{"rm.model": "prepare#base_model"}` trains the
    RM from the base model instead of the SFT model. A value that names no stage is a fixed
    artifact key or local path."""
    edges = {stage: dict(inputs) for stage, inputs in DEFAULT_EDGES.items()}
    for target, source in overrides.items():
        stage, _, name = target.partition(".")
        if stage not in edges or not name:
            raise ConfigError(
                f"run.inputs: {target!r} must be <stage>.<input>, e.g. rm.model; "
                f"stages: {', '.join(STAGE_NAMES)}"
            )
        edges[stage][name] = source
    return edges


def code_version(stage: str) -> str:
    """Part of every key: a release that changes what a stage computes bumps the package
    version or the stage's code_version in the stage table."""
    return f"{xwin.__version__}:{stage_def(stage).code_version}"


def external_digest(ref: str, store) -> str:
    """The digest of an input that no stage of this plan produces: a committed artifact (its
    files' sha256 from the manifest) or a local path (fingerprint)."""
    key, _, inside = ref.partition("#")
    manifest = store.manifest(key)
    if manifest is not None:
        return digest({"files": [(f.path, f.sha256) for f in manifest.files], "inside": inside})
    if Path(ref).exists():
        return digest(fingerprint_path(Path(ref)))
    raise ConfigError(f"{ref!r} is neither a committed artifact nor an existing path")


def _supplied_ref(supplied: str, inside: str, store) -> str:
    """A reference to a path inside a user-supplied artifact: `key#inside` for a store key,
    `<path>/<inside>` for a local folder (the stage context reads both)."""
    if not inside:
        return supplied
    if store.manifest(supplied) is not None:
        return f"{supplied}#{inside}"
    return str(Path(supplied) / inside)


def _stage_config(config, name: str) -> dict[str, Any]:
    return getattr(config, name).model_dump(mode="json")


def _key_config(name: str, stage_config: dict[str, Any]) -> dict[str, Any]:
    """The config fields that decide a stage's output (its row may list fields, such as logging
    intervals, whose change should not rerun it)."""
    row = stage_def(name)
    kept = {k: v for k, v in stage_config.items() if k not in row.not_in_key}
    return row.key_view(kept) if row.key_view else kept


def _stage_source_fingerprint(name: str, stage_config) -> Any:
    """Raw sources a stage reads through its config rather than through inputs (the prepare
    stage's base model and data files); the row's `sources(config)` says what they are."""
    sources = stage_def(name).sources
    return sources(stage_config) if sources else None


def stage_order(selected: set[str], edges: dict[str, dict[str, str]]) -> list[str]:
    """A topological order of the selected stages, ties broken by pipeline order (so a rewired
    stage, e.g. rm reading annotate's pairs, moves after what it reads); a cycle is an error."""
    position = {name: i for i, name in enumerate(STAGE_NAMES)}
    needs = {
        stage: {split_source(src)[0] for src in edges[stage].values()} & selected - {stage}
        for stage in selected
    }
    order: list[str] = []
    while len(order) < len(selected):
        ready = [s for s in selected if s not in order and needs[s] <= set(order)]
        if not ready:
            stuck = sorted(set(selected) - set(order), key=position.get)
            raise ConfigError(f"the stage wiring has a cycle among: {', '.join(stuck)}")
        order.append(min(ready, key=position.get))
    return order


def reachable(start: str, edges: dict[str, dict[str, str]], *, upstream: bool) -> set[str]:
    """Every stage `start` reads from, transitively (upstream), or that reads from it."""
    reads = {stage: {split_source(src)[0] for src in ins.values()} & set(edges) for stage, ins in edges.items()}
    found: set[str] = set()
    frontier = {start}
    while frontier:
        stage = frontier.pop()
        step = reads[stage] if upstream else {s for s, sources in reads.items() if stage in sources}
        frontier |= step - found
        found |= step
    return found - {start}


def window(config, edges: dict[str, dict[str, str]]) -> set[str]:
    """The stages this run executes: `only`, else the default stages from `start_from` to `until`
    (optional stages join when named or wired in). "From" and "to" follow the pipeline order and
    the wiring: `--until rm` with rm reading annotate's pairs includes sample and annotate, which
    come after rm in the default order."""
    run = config.run
    for name in [*run.only, run.start_from, run.until]:
        if name is not None:
            stage_def(name)  # an unknown name is an error that lists the stages
    wired = {split_source(src)[0] for ins in edges.values() for src in ins.values()}
    if run.only:
        return set(run.only)
    selected = {n for n in STAGE_NAMES if n not in OPTIONAL_STAGES or n in wired}
    if run.start_from:
        lo = STAGE_NAMES.index(run.start_from)
        selected &= {n for n in STAGE_NAMES[lo:]} | reachable(run.start_from, edges, upstream=False)
    if run.until:
        hi = STAGE_NAMES.index(run.until)
        selected &= {n for n in STAGE_NAMES[: hi + 1]} | reachable(run.until, edges, upstream=True)
    if run.start_from and run.until and run.start_from not in selected:
        raise ConfigError(f"--from {run.start_from} comes after --until {run.until}")
    return selected


def make_plan(config, store, shards: dict[str, int] | None = None,
              force: set[str] = frozenset()) -> Plan:
    """Keys and decisions for every stage this run touches.

    `shards`: stage -> shard count (from the job profiles). `force`: stages to rerun even if
    their output exists (their dependents rerun too)."""
    shards = shards or {}
    edges = edges_for(config.run.inputs)
    selected = window(config, edges)
    for name in config.run.artifacts:
        if name not in STAGE_NAMES:
            raise ConfigError(f"run.artifacts: unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")
    # Everything the selected stages need, transitively, must get a key.
    needed = set(selected)
    frontier = list(selected)
    while frontier:
        stage = frontier.pop()
        if stage in config.run.artifacts:
            continue
        for source in edges[stage].values():
            upstream, _ = split_source(source)
            if upstream in STAGE_NAMES and upstream not in needed:
                needed.add(upstream)
                frontier.append(upstream)
    order = stage_order(needed, edges)

    planned: dict[str, PlannedStage] = {}
    forced: set[str] = set()
    for name in order:
        stage_config = _stage_config(config, name)
        config_digest = digest(stage_config)
        if name in config.run.artifacts:
            ref = config.run.artifacts[name]
            external_digest(ref, store)  # fails early, naming the bad reference
            planned[name] = PlannedStage(name, ref, {}, stage_config, config_digest,
                                         decision="supplied")
            continue
        inputs: dict[str, str] = {}
        input_digests: dict[str, str] = {}
        depends_on: list[str] = []
        for input_name, source in edges[name].items():
            upstream, inside = split_source(source)
            if upstream in STAGE_NAMES:
                up = planned[upstream]
                depends_on.append(upstream)
                if up.decision == "supplied":
                    inputs[input_name] = _supplied_ref(up.key, inside, store)
                    input_digests[input_name] = external_digest(inputs[input_name], store)
                else:
                    inputs[input_name] = f"{up.key}#{inside}" if inside else up.key
                    input_digests[input_name] = inputs[input_name]  # a content address already
                if upstream in forced:
                    forced.add(name)
            else:  # a fixed artifact key or local path wired in by run.inputs
                inputs[input_name] = source
                input_digests[input_name] = external_digest(source, store)
        count = shards.get(name, 1)
        key_material = {
            "stage": name,
            "config": _key_config(name, stage_config),
            "inputs": input_digests,
            "code": code_version(name),
            "sources": _stage_source_fingerprint(name, getattr(config, name)),
        }
        if count > 1:
            key_material["shards"] = count  # shards' outputs differ by how the work was cut
        key = f"{name}/{digest(key_material)}"
        if name in force:
            forced.add(name)
        stage = PlannedStage(name, key, inputs, stage_config, config_digest, count,
                             depends_on=depends_on)
        done = is_committed(store, key, count)
        if name in selected:
            stage.decision = "run" if (name in forced or not done) else "cached"
        else:
            stage.decision = "cached" if done else "skipped"
        planned[name] = stage

    missing = []
    for stage in planned.values():
        readers = [r.name for r in planned.values()
                   if r.decision == "run" and stage.name in r.depends_on]
        if stage.decision == "skipped" and readers:
            missing.append(f"{stage.name} (needed by {', '.join(readers)})")
    if missing:
        raise ConfigError(
            "these stages' outputs are needed but not in the store and not selected to run: "
            + "; ".join(missing)
            + ". Run them too (widen --only/--from), or supply them with run.artifacts"
        )
    check_local_hardware(config, [s.name for s in planned.values() if s.decision == "run"])
    return Plan({name: planned[name] for name in order})


def check_local_hardware(config, stages: list[str]) -> None:
    """Training stages that need what this machine lacks (QLoRA, flash attention) fail the plan
    when they would run here (the local executor). On a cluster the pod is another machine:
    its stage process makes the same check and exits 2 before loading anything."""
    if config.executor.kind != "local":
        return
    problems = [f"{name}.{problem}" for name in stages
                if isinstance(section := getattr(config, name), TrainConfig)
                for problem in section.hardware_problems()]
    if problems:
        raise ConfigError("this machine cannot run the config (executor.kind local):\n  " + "\n  ".join(problems))


def is_committed(store, key: str, shards: int = 1) -> bool:
    """A stage is done when its artifact (or every one of its shards) is committed."""
    if shards <= 1:
        return store.exists(key)
    return all(store.exists(part_key(key, i, shards)) for i in range(shards))


