"""`xwin artifacts put | get | ls` against a real S3 endpoint (moto over HTTP), the store named by
a pipeline config as a cluster user would: commit a model folder once, wire its key into a run."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from xwin.cli import app


def config_for(tmp_path, store) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"store": store.model_dump(mode="json")}))
    return str(path)


def test_put_get_ls_round_trip(tmp_path, s3_store_config):
    config = config_for(tmp_path, s3_store_config)
    model = tmp_path / "base-model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    single = tmp_path / "pairs.jsonl"
    single.write_text('{"a": 1}\n')
    runner = CliRunner()

    put = runner.invoke(app, ["artifacts", "put", str(model), "models/base", "-c", config])
    assert put.exit_code == 0, put.output
    assert "models/base: 2 files, 10,258 bytes" in put.output
    put_file = runner.invoke(app, ["artifacts", "put", str(single), "data/pairs", "-c", config])
    assert put_file.exit_code == 0, put_file.output

    listed = runner.invoke(app, ["artifacts", "ls", "-c", config])
    assert listed.exit_code == 0, listed.output
    rows = [line.split("\t") for line in listed.output.strip().splitlines()]
    assert [r[0] for r in rows] == ["data/pairs", "models/base"]
    assert all(r[3] == "user" for r in rows)
    only_models = runner.invoke(app, ["artifacts", "ls", "models/", "-c", config])
    assert [line.split("\t")[0] for line in only_models.output.strip().splitlines()] == ["models/base"]

    dest = tmp_path / "copy"
    got = runner.invoke(app, ["artifacts", "get", "models/base", "--dest", str(dest), "-c", config])
    assert got.exit_code == 0, got.output
    assert (dest / "sub" / "weights.bin").read_bytes() == (model / "sub" / "weights.bin").read_bytes()
    got_file = runner.invoke(app, ["artifacts", "get", "data/pairs", "-c", config])
    assert got_file.exit_code == 0, got_file.output
    assert (tmp_path.joinpath(got_file.output.strip()) / "pairs.jsonl").read_text() == '{"a": 1}\n'


def test_bad_input_is_a_clear_error(tmp_path, s3_store_config):
    config = config_for(tmp_path, s3_store_config)
    runner = CliRunner()
    missing = runner.invoke(app, ["artifacts", "put", str(tmp_path / "nope"), "models/x", "-c", config])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f").write_text("x")
    bad_key = runner.invoke(app, ["artifacts", "put", str(tmp_path / "m"), "../escape", "-c", config])
    assert bad_key.exit_code == 2 and "../escape" in bad_key.output
    absent = runner.invoke(app, ["artifacts", "get", "models/never", "-c", config])
    assert absent.exit_code == 2 and "models/never" in absent.output
