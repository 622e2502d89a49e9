"""Job profiles: jobs/*.yaml, overridden field by field by the pipeline config."""

from __future__ import annotations

from pathlib import Path

import pytest

from xwin.core.errors import ConfigError
from xwin.executors.profiles import JUDGE_SERVER, load_judge_server_profile, load_profiles
from xwin.stages.registry import STAGE_NAMES, STAGES

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def test_the_repository_profiles_cover_every_stage_with_its_kind():
    profiles = load_profiles(JOBS)
    assert set(profiles) == set(STAGE_NAMES)
    assert {s for s, p in profiles.items() if p.kind == "train"} == {"sft", "rm", "rs", "dpo"}
    assert {s for s, p in profiles.items() if p.kind == "sharded"} == {"sample", "score"}
    assert profiles["sample"].image == "xwin-sampler:dev"
    assert profiles["sft"].image == "xwin-trainer:dev"
    assert all((JOBS / f"{s}.yaml").exists() for s in STAGE_NAMES)


def test_overrides_replace_single_fields_and_keep_the_rest():
    base = load_profiles(JOBS)["sft"]
    sft = load_profiles(JOBS, {"sft": {"nodes": 2, "gpus": 8, "nproc_per_node": 8}})["sft"]
    assert (sft.nodes, sft.gpus, sft.nproc_per_node) == (2, 8, 8)
    assert (sft.image, sft.memory, sft.shm_size) == (base.image, base.memory, base.shm_size)


def test_a_missing_folder_means_defaults():
    profiles = load_profiles("/nonexistent/jobs")
    assert {s: p.kind for s, p in profiles.items()} == {stage.name: stage.kind for stage in STAGES}


def test_an_override_for_an_unknown_stage_is_an_error():
    with pytest.raises(ConfigError, match="unknown stage.*sftt"):
        load_profiles(JOBS, {"sftt": {"nodes": 2}})


def test_a_bad_field_names_the_file_and_stage(tmp_path):
    (tmp_path / "rm.yaml").write_text("kind: train\nnodes: 0\n")
    with pytest.raises(ConfigError, match=r"rm.yaml \[rm\].*\n  nodes:"):
        load_profiles(tmp_path)


def test_a_stray_profile_file_is_an_error(tmp_path):
    (tmp_path / "samples.yaml").write_text("kind: sharded\n")
    with pytest.raises(ConfigError, match="samples.yaml name no stage"):
        load_profiles(tmp_path)


@pytest.mark.parametrize("stage, fields, message", [
    ("sample", {"nodes": 2}, "nodes/nproc_per_node apply to kind 'train' only"),
    ("sft", {"shards": 4}, "shards apply to kind 'sharded' only"),
    ("sft", {"gpus": 4, "nproc_per_node": 8}, "exceeds gpus=4"),
])
def test_fields_that_do_not_fit_the_kind_are_refused(stage, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_profiles(JOBS, {stage: fields})


@pytest.mark.parametrize("name", ["XWIN_JUDGE_API_KEY", "HF_TOKEN", "WANDB_SECRET", "DB_PASSWORD_FILE",
                                  "openai_api_key"])
def test_a_literal_value_for_a_secret_looking_variable_is_refused_naming_file_and_field(tmp_path, name):
    (tmp_path / "eval.yaml").write_text(f"env:\n  {name}: sk-live-123\n")
    with pytest.raises(ConfigError, match=rf"eval.yaml \[eval\]: env\.{name}: .*secret_env\.{name}"):
        load_profiles(tmp_path)
    with pytest.raises(ConfigError, match=rf"executor.profiles.eval \[eval\]: env\.{name}"):
        load_profiles(JOBS, {"eval": {"env": {name: "sk-live-123"}}})


def test_ordinary_variables_stay_literal_and_secrets_are_references(tmp_path):
    profiles = load_profiles(JOBS, {"eval": {"env": {"KEYBOARD": "us", "MAX_TOKENS": "8"},
                                             "secret_env": {"HF_TOKEN": {"secret": "hf", "key": "token"}}}})
    assert profiles["eval"].env["MAX_TOKENS"] == "8"
    assert profiles["eval"].secret_env["HF_TOKEN"].model_dump() == {"secret": "hf", "key": "token",
                                                                    "optional": False}
    # the repository's judge stages read the judge key from the Secret xwin-judge when it exists
    for stage in ("eval", "annotate"):
        ref = load_profiles(JOBS)[stage].secret_env["XWIN_JUDGE_API_KEY"]
        assert (ref.secret, ref.key, ref.optional) == ("xwin-judge", "api-key", True)
    with pytest.raises(ConfigError, match=r"secret_env.HF_TOKEN.key"):
        load_profiles(JOBS, {"eval": {"secret_env": {"HF_TOKEN": {"secret": "hf"}}}})
def test_the_judge_server_profile_is_the_sampler_image_from_its_file_and_overrides(tmp_path):
    server = load_judge_server_profile(JOBS)
    assert (server.kind, server.image, server.gpus) == ("single", "xwin-sampler:dev", 0)
    assert server.memory == "6Gi"  # jobs/judge-server.yaml, not the JobProfile default
    gpu = load_judge_server_profile(JOBS, {JUDGE_SERVER: {"gpus": 1, "memory": "64Gi"}},
                                    {"sampler": "reg/xwin-sampler:1"})
    assert (gpu.gpus, gpu.memory, gpu.cpu, gpu.image) == (1, "64Gi", server.cpu, "reg/xwin-sampler:1")
    assert load_judge_server_profile("/nonexistent/jobs").image == "xwin-sampler:dev"
    # its file and override are no strays of the stage profiles
    assert set(load_profiles(JOBS, {JUDGE_SERVER: {"gpus": 1}})) == set(STAGE_NAMES)


@pytest.mark.parametrize("fields, message", [
    ({"gpus": -1}, r"judge-server.yaml \+ executor.profiles.judge-server \[judge-server\]"),
    ({"kind": "sharded"}, "kind must be single"),
])
def test_a_bad_judge_server_profile_names_its_source(fields, message):
    with pytest.raises(ConfigError, match=message):
        load_judge_server_profile(JOBS, {JUDGE_SERVER: fields})
