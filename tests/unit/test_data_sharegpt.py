"""ShareGPT import: every cleaning rule counted, deterministic sampling, prompts and held-out
splits; and the real packaged file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from xwin.data.io import DataError, count_records, write_records
from xwin.data.schemas import Conversation, Message
from xwin.data.sharegpt import (
    import_sharegpt,
    prompts_from_conversations,
    sharegpt_file,
    sharegpt_group,
    split_held_out,
)


def turn(speaker: str, text: str) -> dict:
    return {"from": speaker, "value": text}


HAND_WRITTEN = [
    {
        "id": "ok_0",
        "conversations": [
            turn("human", "Hi"),
            turn("gpt", "Hello"),
            turn("human", "Name a fruit"),
            turn("gpt", "Apple"),
        ],
    },
    {"id": "empty_0", "conversations": []},
    {"id": "role_0", "conversations": [turn("human", "Hi"), turn("narrator", "Once upon")]},
    {"id": "blank_0", "conversations": [turn("human", "Hi"), turn("gpt", "   ")]},
    {
        "id": "sys_0",
        "conversations": [turn("human", "Hi"), turn("system", "Be terse"), turn("gpt", "Ok")],
    },
    {
        "id": "alt_0",
        "conversations": [turn("human", "Hi"), turn("human", "Hello?"), turn("gpt", "Hey")],
    },
    {"id": "noreply_0", "conversations": [turn("human", "Anyone?")]},
    {"id": "bad_0", "conversations": "not a list"},
    {"id": "bad_1", "conversations": [{"from": "human"}]},
    ["not", "an", "object"],
    {"id": "long_0", "conversations": [turn("human", "x" * 50), turn("gpt", "y" * 60)]},
    # kept, with fixes:
    {
        "id": "cont_1",
        "conversations": [
            turn("gpt", "...rest of an answer"),
            turn("human", "Thanks"),
            turn("gpt", "You're welcome"),
            turn("human", "And?"),
        ],
    },
    {
        "id": "banner_0",
        "conversations": [
            turn("system", "*This conversation is shared from [**ChatHub**](https://chathub.gg)*"),
            turn("user", "2+2?"),
            turn("chatgpt", "4"),
        ],
    },
    {
        "id": "real_sys_0",
        "conversations": [
            turn("system", "Answer in French"),
            turn("human", "Hello"),
            turn("bard", "Bonjour"),
        ],
    },
    {"id": "ok_0", "conversations": [turn("human", "Same id, other chat"), turn("gpt", "Indeed")]},
]


@pytest.fixture
def sharegpt_json(tmp_path) -> Path:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(HAND_WRITTEN, indent=2))
    return path


def messages(conv: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conv.messages]


def test_every_malformed_case_is_dropped_and_counted(sharegpt_json):
    conversations, report = import_sharegpt(sharegpt_json, max_chars=100)
    assert report.read == len(HAND_WRITTEN) == 15
    assert dict(report.dropped) == {
        "empty": 1,
        "unknown_role": 1,
        "empty_message": 1,
        "misplaced_system": 1,
        "non_alternating": 1,
        "no_assistant_reply": 1,
        "malformed": 3,
        "too_long": 1,
    }
    assert dict(report.modified) == {
        "trimmed_leading_assistant": 1,
        "trimmed_trailing_user": 1,
        "removed_share_banner": 1,
        "renamed_duplicate_id": 1,
    }
    assert report.kept == 5 and report.sampled_out == 0 and not report.file_truncated
    assert report.read == report.kept + sum(report.dropped.values())
    assert [c.id for c in conversations] == ["ok_0", "cont_1", "banner_0", "real_sys_0", "ok_0~2"]
    by_id = {c.id: c for c in conversations}
    assert messages(by_id["ok_0"]) == [
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Name a fruit"),
        ("assistant", "Apple"),
    ]
    assert messages(by_id["cont_1"]) == [("user", "Thanks"), ("assistant", "You're welcome")]
    assert messages(by_id["banner_0"]) == [("user", "2+2?"), ("assistant", "4")]
    assert messages(by_id["real_sys_0"]) == [
        ("system", "Answer in French"),
        ("user", "Hello"),
        ("assistant", "Bonjour"),
    ]
    assert report.assistant_turns == 6 and report.messages == 13


def test_without_max_chars_the_long_one_is_kept(sharegpt_json):
    _, report = import_sharegpt(sharegpt_json)
    assert "too_long" not in report.dropped and report.kept == 6


def test_max_turns_keeps_the_first_exchanges(sharegpt_json):
    conversations, report = import_sharegpt(sharegpt_json, max_turns=1)
    assert messages(conversations[0]) == [("user", "Hi"), ("assistant", "Hello")]
    assert report.modified["limited_turns"] == 1


def test_limit_samples_deterministically_in_file_order(tmp_path):
    items = [
        {"id": f"c{i}", "conversations": [turn("human", f"q{i}"), turn("gpt", f"a{i}")]}
        for i in range(200)
    ]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(items))
    first, report = import_sharegpt(path, limit=20, seed=7)
    again, _ = import_sharegpt(path, limit=20, seed=7)
    other, _ = import_sharegpt(path, limit=20, seed=8)
    ids = [c.id for c in first]
    assert ids == [c.id for c in again]
    assert ids != [c.id for c in other]
    assert len(ids) == 20 == len(set(ids))
    assert ids == sorted(ids, key=lambda i: int(i[1:]))  # file order kept
    assert report.kept == 20 and report.sampled_out == 180
    # the sample spreads over the file, not just its head
    assert max(int(i[1:]) for i in ids) > 100
    everything, _ = import_sharegpt(path, limit=500)
    assert len(everything) == 200


def test_truncated_file_keeps_complete_records_and_says_so(tmp_path, sharegpt_json):
    text = sharegpt_json.read_text()
    cut = text.index('"id": "cont_1"') + 40  # inside the 12th record
    path = tmp_path / "cut.json"
    path.write_text(text[:cut])
    conversations, report = import_sharegpt(path)
    assert report.file_truncated
    assert report.read == 11
    assert [c.id for c in conversations] == ["ok_0", "long_0"]


def test_invalid_json_inside_the_file_is_an_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"id": "a", "conversations": []}, {"id": "b", "conversations": [}]')
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON after conversation #1"):
        import_sharegpt(path)


def test_prompts_are_cut_before_assistant_turns():
    conv = Conversation(
        id="x_0",
        messages=[
            Message(role="user", content="q1"),
            Message(role="assistant", content="a1"),
            Message(role="user", content="q2"),
            Message(role="assistant", content="a2"),
        ],
    )
    first = prompts_from_conversations([conv])
    assert [(p.id, [m.content for m in p.messages], p.meta["reference"]) for p in first] == [
        ("x_0#0", ["q1"], "a1")
    ]
    every = prompts_from_conversations([conv], turns="every", with_reference=False)
    assert [(p.id, [m.content for m in p.messages]) for p in every] == [
        ("x_0#0", ["q1"]),
        ("x_0#1", ["q1", "a1", "q2"]),
    ]
    assert "reference" not in every[0].meta
    last = prompts_from_conversations([conv], turns="last")
    assert [(p.id, p.meta["turn"]) for p in last] == [("x_0#1", 1)]
    with pytest.raises(DataError):
        prompts_from_conversations([conv], turns="all")  # type: ignore[arg-type]


def test_held_out_split_is_deterministic_disjoint_and_keeps_groups_together():
    def conv(cid: str) -> Conversation:
        return Conversation(
            id=cid,
            messages=[Message(role="user", content=cid), Message(role="assistant", content="a")],
        )

    records = [conv(f"g{g}_{part}") for g in range(2000) for part in range(2)]
    train, held = split_held_out(records, 0.1, seed=3)
    assert len(train) + len(held) == len(records)
    assert not {c.id for c in train} & {c.id for c in held}
    assert 0.08 < len(held) / len(records) < 0.12
    held_groups = {sharegpt_group(c.id) for c in held}
    assert not held_groups & {sharegpt_group(c.id) for c in train}  # both parts on one side
    _, again_held = split_held_out(list(reversed(records)), 0.1, seed=3)
    assert {c.id for c in again_held} == {c.id for c in held}  # order does not matter
    _, other_held = split_held_out(records, 0.1, seed=4)
    assert {c.id for c in other_held} != {c.id for c in held}
    assert sharegpt_group("QWJhYvA_12~2#1") == "QWJhYvA"
    with pytest.raises(DataError):
        split_held_out(records, 1.0)


@pytest.mark.slow
def test_real_packaged_sharegpt_file(tmp_path):
    start = time.perf_counter()
    conversations, report = import_sharegpt(sharegpt_file())
    seconds = time.perf_counter() - start
    print(f"ShareGPT import: {seconds:.1f} s, {json.dumps(report.as_dict())}")
    assert report.read > 15_000
    assert report.kept > 15_000 and report.kept / report.read > 0.95
    assert report.read == report.kept + sum(report.dropped.values())
    assert report.assistant_turns > 3 * report.kept  # real multi-turn data
    assert len({c.id for c in conversations}) == len(conversations)
    assert set(report.dropped) <= {
        "empty",
        "empty_message",
        "no_assistant_reply",
        "non_alternating",
        "misplaced_system",
        "unknown_role",
        "malformed",
    }
    path = tmp_path / "sharegpt.jsonl"
    assert write_records(path, conversations) == report.kept
    assert count_records(path, Conversation) == report.kept  # every output record validates
