"""Bad input exits with code 2 (never retried) and a message naming the file, the line and the
field, through the real command-line app: never a traceback, and never accepted quietly."""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from xwin.cli import app

runner = CliRunner()

USER = {"role": "user", "content": "2+2?"}


def invoke(args: list[str], **kwargs):
    result = runner.invoke(app, args, **kwargs)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# ---- data files


def test_invalid_utf8_in_a_jsonl_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"context": [USER], "chosen": "4", "rejected": "5"}).encode()
    bad = good.replace(b'"4"', b'"\xff\xfe"')
    path.write_bytes(good + b"\n" + good + b"\n" + bad + b"\n")
    result = invoke(["data", "validate", "--kind", "pairs", str(path)])
    assert result.exit_code == 2
    assert f"{path}:3: not valid UTF-8" in result.stderr


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_score_is_refused_naming_file_line_and_field(tmp_path, constant):
    path = tmp_path / "scored.jsonl"
    record = {"id": "a", "context": [USER], "responses": [{"text": "4", "score": 1.5}, {"text": "5", "score": 0.0}]}
    line = json.dumps(record).replace('"score": 0.0', f'"score": {constant}')
    path.write_text(json.dumps(record) + "\n" + line + "\n")
    result = invoke(["data", "validate", "--kind", "multiwise", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: responses.1.score: {constant} is not a finite number" in result.stderr


def test_a_non_finite_number_anywhere_in_a_record_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"context": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b", '
                    '"meta": {"judge": {"scores": [1, NaN]}}}\n')
    result = invoke(["data", "validate", "--kind", "pairs", str(path)])
    assert result.exit_code == 2
    assert f"{path}:1: meta.judge.scores.1: NaN is not a finite number" in result.stderr


def test_a_sharegpt_file_whose_top_level_is_not_a_list_exits_2(tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}]}))
    result = invoke(["data", "import-sharegpt", "--input", str(path), "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2
    assert f"{path}: the top level is an object; expected a JSON list of conversations" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()
    path.write_text("")
    result = invoke(["data", "import-sharegpt", "--input", str(path), "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2 and f"{path}: empty" in result.stderr


# ---- models


def test_a_model_folder_without_a_tokenizer_exits_2_naming_the_folder(tmp_path, tiny_model_dir):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    result = invoke(["model", "tiny", str(tmp_path / "out"), "--tokenizer", str(folder)])
    assert result.exit_code == 2
    assert f"{folder}: no tokenizer" in result.stderr and "tokenizer.json" in result.stderr


@pytest.mark.parametrize("content", [
    b"not a gguf at all",
    b"GGUF\x03\x00",  # cut off inside the header
    b"GGUF" + struct.pack("<IQQ", 3, 0, 5),  # a header promising 5 metadata entries, then nothing
])
def test_a_file_named_gguf_that_is_not_one_exits_2(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    result = invoke(["model", "import-gguf", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{path}: not a readable GGUF file" in result.stderr
    assert not (tmp_path / "out").exists()


# ---- configs and stage specs


@pytest.fixture
def pipeline(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"run:\n  workdir: {tmp_path / 'work'}\nstore:\n  root: {tmp_path / 'store'}\n")
    return path


def test_a_stage_spec_with_invalid_yaml_exits_2_naming_file_and_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("stage: sft\noutput: runs/r/sft\nconfig:\n  epochs: [1\n")
    result = invoke(["stage", "sft", "--config", str(spec)])
    assert result.exit_code == 2
    assert f"error: {spec}: not valid YAML" in result.stderr and "line 5" in result.stderr
    spec.write_text("- stage: sft\n")
    result = invoke(["stage", "sft", "--config", str(spec)])
    assert result.exit_code == 2 and f"{spec}: the top level must be a mapping" in result.stderr


@pytest.mark.parametrize(
    "value", ["!!python/object/apply:os.system ['true']", "!custom 1", "[unclosed", "{a: 1"]
)
def test_a_set_value_that_is_not_a_yaml_value_exits_2_naming_the_field(pipeline, value):
    result = invoke(["run", str(pipeline), "--dry-run", "--set", f"sft.learning_rate={value}"])
    assert result.exit_code == 2
    assert "error: --set " in result.stderr and "sft.learning_rate=" in result.stderr
    assert "not a YAML value" in result.stderr


def test_invalid_json_in_an_environment_variable_exits_2_naming_the_variable(pipeline):
    result = invoke(["run", str(pipeline), "--dry-run"], env={"XWIN_RUN__ONLY": "[sft"})
    assert result.exit_code == 2
    assert "environment variable XWIN_RUN__ONLY: not valid JSON" in result.stderr
    result = invoke(["run", str(pipeline), "--dry-run"], env={"XWIN_EXECUTOR": "{kind: local"})
    assert result.exit_code == 2
    assert "environment variable XWIN_EXECUTOR: not valid JSON" in result.stderr


@pytest.mark.parametrize("field", ["sft.epochs", "dpo.beta", "rm.learning_rate", "run.retry_backoff_s"])
@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_infinite_or_nan_config_numbers_exit_2_naming_the_field(pipeline, field, value):
    result = invoke(["run", str(pipeline), "--dry-run", "--set", f"{field}={value}"])
    assert result.exit_code == 2
    assert f"{field}: Input should be a finite number" in result.stderr


def test_an_infinite_number_in_the_environment_exits_2_too(pipeline):
    result = invoke(["run", str(pipeline), "--dry-run"], env={"XWIN_DPO__BETA": "inf"})
    assert result.exit_code == 2
    assert "dpo.beta: Input should be a finite number" in result.stderr


@pytest.mark.parametrize("args, env", [
    (["--run-id", "../etc"], {}),
    ([], {"XWIN_RUN_ID": "my run"}),
])
def test_a_run_id_that_is_not_a_name_exits_2_before_anything_runs(pipeline, tmp_path, args, env):
    result = invoke(["run", str(pipeline), *args], env=env)
    assert result.exit_code == 2
    assert "is not a run id (letters, digits, '.', '_' and '-'" in result.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "store").exists()


def test_a_run_id_in_the_config_is_checked_naming_the_field(pipeline):
    result = invoke(["run", str(pipeline), "--set", "run.id=a/b"])
    assert result.exit_code == 2
    assert "run.id: String should match pattern" in result.stderr
