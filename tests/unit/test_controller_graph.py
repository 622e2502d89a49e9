"""Planning: content-address keys, what reruns when a config changes, subsets of the pipeline,
user-supplied artifacts, rewiring, and what is found in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.artifacts.stage_io import part_key
from xwin.config import load_config
from xwin.controller.graph import DEFAULT_EDGES, OPTIONAL_STAGES, make_plan
from xwin.core.errors import ConfigError
from xwin.stages.registry import STAGE_NAMES

DEFAULT_STAGES = [s for s in STAGE_NAMES if s not in OPTIONAL_STAGES]


@pytest.fixture
def store(tmp_path):
    return open_store(StoreConfig(root=tmp_path / "store"))


def plan_of(store, *overrides, shards=None, force=frozenset()):
    return make_plan(load_config(None, list(overrides)), store, shards=shards, force=force)


def downstream_of(stage: str) -> set[str]:
    """Stages that read `stage`'s output, transitively, from the edge table itself."""
    found = {stage}
    changed = True
    while changed:
        changed = False
        for name in DEFAULT_STAGES:
            sources = {src.partition("#")[0] for src in DEFAULT_EDGES[name].values()}
            if name not in found and sources & found:
                found.add(name)
                changed = True
    return found


def commit(store, key: str, tmp_path: Path, files: dict[str, str] | None = None):
    folder = tmp_path / f"art-{key.replace('/', '_')}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {"x.txt": key}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    store.commit(key, folder, producer="test")


def test_default_plan_runs_every_default_stage_in_dependency_order(store):
    plan = plan_of(store)
    assert list(plan.stages) == DEFAULT_STAGES
    assert [s.name for s in plan.to_run()] == DEFAULT_STAGES
    for stage in plan.stages.values():
        assert stage.key.startswith(f"{stage.name}/")
    sft = plan.stages["sft"]
    prepare_key = plan.stages["prepare"].key
    assert sft.inputs == {"model": f"{prepare_key}#base_model", "train": f"{prepare_key}#sft.jsonl"}
    assert plan.stages["score"].inputs == {"reward_model": plan.stages["rm"].key,
                                           "samples": plan.stages["sample"].key}


@pytest.mark.parametrize("override, changed_stage", [
    ("sample.temperature=0.5", "sample"),
    ("prepare.prompts=7", "prepare"),
    ("sample.responses_per_prompt=3", "sample"),
])
def test_changing_one_stage_config_changes_exactly_its_key_and_its_dependents(store, override,
                                                                             changed_stage):
    before = plan_of(store).keys()
    after = plan_of(store, override).keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == downstream_of(changed_stage)


def test_keys_do_not_depend_on_the_run_name_workdir_or_retries(store):
    a = plan_of(store).keys()
    b = plan_of(store, "run.name=other", "run.workdir=/elsewhere", "run.max_attempts=5").keys()
    assert a == b


def test_shard_count_is_part_of_a_sharded_stage_key(store):
    one = plan_of(store, shards={"sample": 1}).keys()
    four = plan_of(store, shards={"sample": 4}).keys()
    assert one["sft"] == four["sft"]
    assert one["sample"] != four["sample"]
    assert one["score"] != four["score"]  # reads the sample key


def test_committed_stages_are_cached_and_their_dependents_still_run(store, tmp_path):
    plan = plan_of(store)
    commit(store, plan.stages["prepare"].key, tmp_path)
    commit(store, plan.stages["sft"].key, tmp_path)
    again = plan_of(store)
    assert again.keys() == plan.keys()
    decisions = {n: s.decision for n, s in again.stages.items()}
    assert decisions["prepare"] == decisions["sft"] == "cached"
    assert all(decisions[n] == "run" for n in DEFAULT_STAGES[2:])


def test_a_sharded_stage_is_done_only_when_every_shard_is_committed(store, tmp_path):
    plan = plan_of(store, shards={"sample": 2})
    key = plan.stages["sample"].key
    commit(store, part_key(key, 0, 2), tmp_path)
    assert plan_of(store, shards={"sample": 2}).stages["sample"].decision == "run"
    commit(store, part_key(key, 1, 2), tmp_path)
    assert plan_of(store, shards={"sample": 2}).stages["sample"].decision == "cached"


def test_force_reruns_a_committed_stage_and_everything_downstream(store, tmp_path):
    plan = plan_of(store)
    for name in DEFAULT_STAGES:
        commit(store, plan.stages[name].key, tmp_path)
    assert plan_of(store).to_run() == []
    forced = plan_of(store, force={"rm"})
    assert {s.name for s in forced.to_run()} == downstream_of("rm")


def test_only_runs_the_named_stages_and_needs_their_inputs_in_the_store(store, tmp_path):
    with pytest.raises(ConfigError, match=r"prepare \(needed by sft\)"):
        plan_of(store, "run.only=[sft]")
    plan = plan_of(store)
    commit(store, plan.stages["prepare"].key, tmp_path)
    only = plan_of(store, "run.only=[sft]")
    assert list(only.stages) == ["prepare", "sft"]
    assert only.stages["prepare"].decision == "cached"
    assert only.stages["sft"].decision == "run"


def test_from_and_until_cut_the_pipeline_in_order(store, tmp_path):
    plan = plan_of(store, "run.until=sft")
    assert [s.name for s in plan.to_run()] == ["prepare", "sft"]
    full = plan_of(store)
    for name in ("prepare", "sft", "rm"):
        commit(store, full.stages[name].key, tmp_path)
    window = plan_of(store, "run.start_from=sample", "run.until=select")
    assert [s.name for s in window.to_run()] == ["sample", "score", "select"]
    assert {window.stages[n].decision for n in ("prepare", "sft", "rm")} == {"cached"}
    assert "rs" not in window.stages
    with pytest.raises(ConfigError, match="comes after"):
        plan_of(store, "run.start_from=dpo", "run.until=sft")
    with pytest.raises(ConfigError, match="unknown stage 'sfft'"):
        plan_of(store, "run.only=[sfft]")


def test_a_user_supplied_model_replaces_a_stage_and_its_upstream(store, tmp_path, tiny_model_dir):
    (tmp_path / "sel").mkdir()
    (tmp_path / "sel" / "rs.jsonl").write_text("")
    plan = plan_of(store, f"run.artifacts.sft={tiny_model_dir}", "run.only=[rs]",
                   "run.artifacts.select=" + str(tmp_path / "sel"))
    assert plan.stages["sft"].decision == "supplied"
    assert "prepare" not in plan.stages  # nothing left needs it
    assert plan.stages["rs"].inputs == {"model": str(tiny_model_dir),
                                        "train": str(tmp_path / "sel" / "rs.jsonl")}
    # A different supplied file is a different input: the key follows its content's identity.
    key = plan.stages["rs"].key
    (tmp_path / "sel" / "rs.jsonl").write_text("{}\n")
    assert plan_of(store, f"run.artifacts.sft={tiny_model_dir}", "run.only=[rs]",
                   "run.artifacts.select=" + str(tmp_path / "sel")).stages["rs"].key != key


def test_a_supplied_store_key_is_read_with_paths_inside_it(store, tmp_path):
    commit(store, "imports/my-sft", tmp_path, {"config.json": "{}"})
    commit(store, "imports/prep", tmp_path, {"prompts.jsonl": "", "base_model/config.json": "{}"})
    plan = plan_of(store, "run.artifacts.sft=imports/my-sft", "run.artifacts.prepare=imports/prep",
                   "run.only=[sample]")
    assert plan.stages["sample"].inputs == {"model": "imports/my-sft",
                                            "prompts": "imports/prep#prompts.jsonl"}


def test_a_supplied_reference_that_does_not_exist_is_a_config_error(store):
    with pytest.raises(ConfigError, match="neither a committed artifact nor an existing path"):
        plan_of(store, "run.artifacts.sft=/no/such/model")


def test_run_inputs_rewire_a_stage_and_change_only_its_downstream_keys(store):
    default = plan_of(store)
    rewired = plan_of(store, "run.inputs={rm.model: prepare#base_model}")
    rm = rewired.stages["rm"]
    assert rm.inputs["model"] == f"{default.stages['prepare'].key}#base_model"
    assert "sft" not in rm.depends_on
    changed = {n for n in default.stages if default.keys()[n] != rewired.keys()[n]}
    assert changed == downstream_of("rm")


def test_annotate_joins_when_wired_in_and_moves_before_what_reads_it(store):
    assert "annotate" not in plan_of(store).stages
    plan = plan_of(store, "run.inputs={rm.train: annotate#pairs.jsonl}")
    order = list(plan.stages)
    assert order.index("sample") < order.index("annotate") < order.index("rm")
    assert plan.stages["rm"].inputs["train"] == f"{plan.stages['annotate'].key}#pairs.jsonl"


def test_from_and_until_follow_the_wiring(store, tmp_path):
    wired = "run.inputs={rm.train: annotate#pairs.jsonl}"
    # rm now reads annotate's pairs, so --until rm needs sample and annotate (later in the order)
    until_rm = plan_of(store, wired, "run.until=rm")
    assert [s.name for s in until_rm.to_run()] == ["prepare", "sft", "sample", "annotate", "rm"]
    # without the wiring the order alone decides, as before
    assert [s.name for s in plan_of(store, "run.until=rm").to_run()] == ["prepare", "sft", "rm"]
    # and --from sample reaches rm through annotate (earlier in the order)
    for name in ("prepare", "sft"):
        commit(store, until_rm.stages[name].key, tmp_path)
    from_sample = plan_of(store, wired, "run.start_from=sample", "run.until=rm")
    assert sorted(s.name for s in from_sample.to_run()) == ["annotate", "rm", "sample"]


def test_a_wiring_cycle_is_reported(store):
    with pytest.raises(ConfigError, match="cycle"):
        plan_of(store, "run.inputs={sft.model: dpo}")
    with pytest.raises(ConfigError, match="<stage>.<input>"):
        plan_of(store, "run.inputs={nonsense: sft}")


def test_a_user_preference_file_replaces_one_input(store, tmp_path):
    pairs = tmp_path / "xwin-pair.jsonl"
    pairs.write_text('{"context": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}\n')
    plan = plan_of(store, f"run.inputs={{rm.train: {pairs}}}")
    assert plan.stages["rm"].inputs["train"] == str(pairs)
    key = plan.stages["rm"].key
    pairs.write_text(pairs.read_text() * 2)  # new content, same path: a new key
    assert plan_of(store, f"run.inputs={{rm.train: {pairs}}}").stages["rm"].key != key
    with pytest.raises(ConfigError, match="neither a committed artifact nor an existing path"):
        plan_of(store, "run.inputs={rm.train: /no/such/pairs.jsonl}")


@pytest.mark.parametrize("override", ["score.backend=vllm", "score.backend=auto", "score.max_batch_tokens=4096",
                                      "score.tensor_parallel_size=2", "eval.reward_backend=vllm"])
def test_how_float32_rewards_are_computed_is_not_part_of_a_key(store, override):
    """In float32 the backend and batching move a reward by ~1e-5: a switch reruns nothing."""
    assert plan_of(store, "score.dtype=float32", override).keys() == plan_of(store, "score.dtype=float32").keys()


def test_in_bfloat16_the_score_backend_is_part_of_the_score_key(store):
    """bfloat16 rewards move by up to ~0.1 with the kernel and batch: a switch reruns score."""
    before = plan_of(store, "score.dtype=bfloat16").keys()
    after = plan_of(store, "score.dtype=bfloat16", "score.backend=vllm").keys()
    assert {name for name in before if before[name] != after[name]} == downstream_of("score")
    assert plan_of(store, "score.dtype=bfloat16").keys() != plan_of(store, "score.dtype=float32").keys()
