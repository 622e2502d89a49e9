"""Record files: validation errors name file, line and field; writes are atomic; the chunked
writer survives a torn last line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from xwin.core.errors import UserError
from xwin.data.io import (
    ChunkedJsonlWriter,
    DataError,
    count_records,
    read_complete_records,
    read_records,
    write_records,
)
from xwin.data.schemas import Conversation, MultiwiseRecord, PreferencePair, Prompt

USER = {"role": "user", "content": "What is 2+2?"}
ASSISTANT = {"role": "assistant", "content": "4"}

GOOD = {
    "conversations": {"id": "c1", "messages": [USER, ASSISTANT]},
    "prompts": {"id": "p1", "messages": [USER]},
    "pairs": {"context": [USER], "chosen": "4", "rejected": "5"},
    "multiwise": {"id": "m1", "context": [USER], "responses": [{"text": "4", "score": 1.5}]},
}


def write_lines(path: Path, objects: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return path


@pytest.mark.parametrize(
    ("kind", "bad", "expected"),
    [
        (
            "conversations",
            {"id": "c2", "messages": [USER, {"role": "robot", "content": "4"}]},
            "messages.1.role: Input should be 'system', 'user' or 'assistant'",
        ),
        (
            "prompts",
            {"id": "p2", "messages": [USER, ASSISTANT]},
            "messages: Value error, the last message must be from the user",
        ),
        (
            "pairs",
            {
                "context": [USER, ASSISTANT, {"role": "bot", "content": "x"}],
                "chosen": "a",
                "rejected": "b",
            },
            "context.2.role: Input should be 'system', 'user' or 'assistant'",
        ),
        (
            "multiwise",
            {
                "id": "m2",
                "context": [USER],
                "responses": [{"text": "4"}, {"text": "5", "score": "high"}],
            },
            "responses.1.score: Input should be a valid number",
        ),
    ],
)
def test_bad_record_error_names_file_line_and_field(tmp_path, kind, bad, expected):
    path = write_lines(tmp_path / f"{kind}.jsonl", [GOOD[kind], "", GOOD[kind], bad, GOOD[kind]])
    with pytest.raises(DataError) as err:
        list(read_records(path, kind))
    # line 4: the blank line 2 still counts as a line
    assert str(err.value).startswith(f"{path}:4: {expected}")
    assert isinstance(err.value, UserError)


def test_invalid_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [GOOD["pairs"], '{"context": [}'])
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: invalid JSON: .*column 14"):
        list(read_records(path, "pairs"))


def test_unknown_field_and_missing_field_are_named(tmp_path):
    extra = dict(GOOD["pairs"], chosen_scor=1.0)
    path = write_lines(tmp_path / "a.jsonl", [extra])
    with pytest.raises(DataError, match=r"a\.jsonl:1: chosen_scor: Extra inputs are not permitted"):
        list(read_records(path, PreferencePair))
    missing = {"context": [USER], "chosen": "4"}
    path = write_lines(tmp_path / "b.jsonl", [missing])
    with pytest.raises(DataError, match=r"b\.jsonl:1: rejected: Field required"):
        list(read_records(path, PreferencePair))


def test_reading_is_lazy_records_before_the_bad_one_arrive_first(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD["prompts"], GOOD["prompts"], {"id": "x"}])
    reader = read_records(path, Prompt)
    assert next(reader).id == "p1"
    assert next(reader).id == "p1"
    with pytest.raises(DataError, match=r"p\.jsonl:3: messages: Field required"):
        next(reader)


def test_folder_reads_every_jsonl_sorted_and_errors_name_the_file(tmp_path):
    write_lines(tmp_path / "b.jsonl", [dict(GOOD["prompts"], id="b")])
    write_lines(
        tmp_path / "a.jsonl", [dict(GOOD["prompts"], id="a1"), dict(GOOD["prompts"], id="a2")]
    )
    (tmp_path / "notes.txt").write_text("not data")
    assert [p.id for p in read_records(tmp_path, "prompts")] == ["a1", "a2", "b"]
    write_lines(tmp_path / "c.jsonl", [GOOD["prompts"], {"id": "c", "messages": []}])
    with pytest.raises(DataError, match=r"c\.jsonl:2: messages: Value error, no messages"):
        count_records(tmp_path, "prompts")


def test_missing_file_empty_folder_and_unknown_kind(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl", "pairs"))
    with pytest.raises(DataError, match="no \\*.jsonl files"):
        list(read_records(tmp_path, "pairs"))
    with pytest.raises(DataError, match="unknown record kind 'pair'"):
        list(read_records(tmp_path, "pair"))


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_write_then_read_round_trips_every_kind(tmp_path, kind):
    cls = {
        "conversations": Conversation,
        "prompts": Prompt,
        "pairs": PreferencePair,
        "multiwise": MultiwiseRecord,
    }[kind]
    records = [cls.model_validate(GOOD[kind]), cls.model_validate(GOOD[kind])]
    path = tmp_path / "sub" / f"{kind}.jsonl"
    assert write_records(path, records) == 2
    assert list(read_records(path, kind)) == records
    assert "null" not in path.read_text()  # None fields are left out (they are the defaults)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file made here


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_records(path, [Prompt.model_validate(GOOD["prompts"])])
    before = path.read_bytes()

    def records_then_crash():
        for i in range(1000):
            yield Prompt(id=f"n{i}", messages=[USER])
        raise RuntimeError("producer died mid-write")

    with pytest.raises(RuntimeError, match="producer died"):
        write_records(path, records_then_crash())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]  # no temp file left


def test_chunked_writer_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "partial.jsonl"
    with ChunkedJsonlWriter(path) as writer:
        assert (
            writer.append([Prompt(id="a", messages=[USER]), Prompt(id="b", messages=[USER])]) == 2
        )
        assert writer.append([]) == 0
        assert writer.append([Prompt(id="c", messages=[USER])]) == 1
    complete = path.read_bytes()
    # a crash in the middle of the next chunk: half a line, no newline
    torn = Prompt(id="d", messages=[USER]).model_dump_json().encode()[:17]
    path.write_bytes(complete + torn)

    assert [p.id for p in read_complete_records(path, Prompt)] == ["a", "b", "c"]
    with pytest.raises(DataError):  # the plain reader sees the damage
        list(read_records(path, Prompt))

    # resuming cuts the torn tail before appending, so the new line is not glued onto it
    with ChunkedJsonlWriter(path) as writer:
        writer.append([Prompt(id="d", messages=[USER])])
    assert [p.id for p in read_records(path, Prompt)] == ["a", "b", "c", "d"]
    assert path.read_bytes().startswith(complete)


def test_read_complete_records_missing_file_and_real_damage(tmp_path):
    assert list(read_complete_records(tmp_path / "none.jsonl", "prompts")) == []
    path = write_lines(tmp_path / "x.jsonl", [GOOD["prompts"], {"id": "bad"}, GOOD["prompts"]])
    with pytest.raises(DataError, match=r"x\.jsonl:2: messages: Field required"):
        list(read_complete_records(path, "prompts"))
    # a file holding only a torn line reads as empty
    only_torn = tmp_path / "torn.jsonl"
    only_torn.write_bytes(b'{"id": "p1", "mess')
    assert list(read_complete_records(only_torn, "prompts")) == []


def test_invalid_utf8_and_non_finite_numbers_in_a_partial_file_name_the_line(tmp_path):
    good = json.dumps(GOOD["multiwise"]).encode()
    path = tmp_path / "partial.jsonl"
    path.write_bytes(good + b"\n" + good.replace(b'"4"', b'"\xc3"') + b"\n")
    with pytest.raises(DataError, match=r"partial\.jsonl:2: not valid UTF-8 \(byte 0xc3"):
        list(read_complete_records(path, "multiwise"))
    path.write_bytes(good + b"\n" + good.replace(b"1.5", b"NaN") + b"\n")
    with pytest.raises(DataError, match=r"partial\.jsonl:2: responses\.0\.score: NaN is not a finite number"):
        list(read_complete_records(path, "multiwise"))


def test_records_built_in_python_refuse_non_finite_scores_too():
    with pytest.raises(ValueError, match="finite number"):
        MultiwiseRecord.model_validate({**GOOD["multiwise"], "responses": [{"text": "4", "score": float("inf")}]})
    with pytest.raises(ValueError, match="finite number"):
        PreferencePair.model_validate({**GOOD["pairs"], "chosen_score": float("nan")})
