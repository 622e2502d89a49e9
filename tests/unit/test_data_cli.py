"""`xwin data ...` through the real command-line app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from xwin.cli import app
from xwin.data.io import read_records
from xwin.data.mtbench import read_mtbench_questions

runner = CliRunner()

USER = {"role": "user", "content": "2+2?"}


def test_validate_ok_prints_the_count(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"context": [USER], "chosen": "4", "rejected": str(i)}) + "\n"
            for i in range(3)
        )
    )
    result = runner.invoke(app, ["data", "validate", "--kind", "pairs", str(path)])
    assert result.exit_code == 0, result.output
    assert f"ok: 3 pairs records in {path}" in result.output


def test_validate_bad_record_exits_2_naming_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"context": [USER], "chosen": "4", "rejected": "5"}
    bad = {
        "context": [USER, {"role": "assistant", "content": "4"}, {"role": "robot", "content": "?"}],
        "chosen": "4",
        "rejected": "5",
    }
    path.write_text("\n".join(json.dumps(r) for r in [good, good, bad, good]) + "\n")
    result = runner.invoke(app, ["data", "validate", "--kind", "pairs", str(path)])
    assert result.exit_code == 2
    assert (
        f"{path}:3: context.2.role: Input should be 'system', 'user' or 'assistant'"
        in result.stderr
    )


def test_validate_wrong_kind_is_a_bad_record_too(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": "p", "messages": [USER]}) + "\n")
    result = runner.invoke(app, ["data", "validate", "-k", "conversations", str(path)])
    assert result.exit_code == 2
    assert (
        f"{path}:1: messages: Value error, the last message must be from the assistant"
        in result.stderr
    )
    assert runner.invoke(app, ["data", "validate", "-k", "prompts", str(path)]).exit_code == 0


def test_import_sharegpt_prints_counts_and_writes_valid_conversations(tmp_path):
    source = tmp_path / "sg.json"
    items = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": "human", "value": f"q{i}"},
                {"from": "gpt", "value": f"a{i}"},
            ],
        }
        for i in range(10)
    ]
    items.append({"id": "e", "conversations": []})
    source.write_text(json.dumps(items))
    out = tmp_path / "out" / "conversations.jsonl"
    report = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "data",
            "import-sharegpt",
            "--input",
            str(source),
            "--output",
            str(out),
            "--limit",
            "4",
            "--seed",
            "1",
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "read 11 conversations" in result.output
    assert "kept 4 (4 assistant turns), sampled out 6" in result.output
    assert "dropped      1  empty" in result.output
    assert len(list(read_records(out, "conversations"))) == 4
    assert json.loads(report.read_text())["dropped"] == {"empty": 1}


def test_import_sharegpt_missing_input_exits_2(tmp_path):
    result = runner.invoke(
        app,
        [
            "data",
            "import-sharegpt",
            "--input",
            str(tmp_path / "none.json"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_import_mtbench_writes_questions_or_prompts(tmp_path):
    questions = tmp_path / "mtbench.jsonl"
    result = runner.invoke(app, ["data", "import-mtbench", "--output", str(questions)])
    assert result.exit_code == 0, result.output
    assert "wrote 80 MT-bench questions (8 categories" in result.output
    assert len(read_mtbench_questions(questions)) == 80
    assert runner.invoke(app, ["data", "validate", "-k", "mtbench", str(questions)]).exit_code == 0
    prompts = tmp_path / "prompts.jsonl"
    result = runner.invoke(app, ["data", "import-mtbench", "--output", str(prompts), "--prompts"])
    assert result.exit_code == 0
    assert [p.id for p in read_records(prompts, "prompts")][:2] == ["mtbench-81", "mtbench-82"]
