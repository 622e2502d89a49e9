import json

from xwin.data.mtbench import load_mtbench_questions
from xwin.judge.cache import ResponseCache, request_key
from xwin.judge.mtbench import reference_for
from xwin.judge.prompts import alpaca_pair, context_pair, mtbench_pair, mtbench_single


def test_reference_answers_are_used_only_for_math_reasoning_and_coding():
    questions = {q.question_id: q for q in load_mtbench_questions()}
    assert len(questions) == 80
    writing, math_q = questions[81], questions[111]
    assert writing.category == "writing" and reference_for(writing) is None
    assert math_q.category == "math" and reference_for(math_q) == math_q.reference
    turn1 = mtbench_single(math_q.turns, ["my answer", "my second"], 1, reference_for(math_q))
    assert math_q.reference[0] in turn1[1]["content"]
    assert "Reference Answer" in turn1[1]["content"]
    plain = mtbench_single(writing.turns, ["my answer", "my second"], 1, reference_for(writing))
    assert "Reference" not in plain[1]["content"]
    assert plain[0] == {"role": "system", "content": "You are a helpful assistant."}


def test_second_turn_prompts_show_the_whole_conversation():
    turns = ["Write a haiku.", "Now make it rhyme."]
    single = mtbench_single(turns, ["first answer", "second answer"], 2)[1]["content"]
    assert single.index("Write a haiku.") < single.index("first answer") \
        < single.index("Now make it rhyme.") < single.index("second answer")
    pair = mtbench_pair(turns, ["a1", "a2"], ["b1", "b2"], 2)
    assert "second user question" in pair[0]["content"]
    text = pair[1]["content"]
    assert text.index("a2") < text.index("b1") < text.index("b2")


def test_pair_prompts_put_the_first_answer_in_position_a():
    text = alpaca_pair("Say hi", "OUT-X", "OUT-Y")[1]["content"]
    assert text.index("Output A]\nOUT-X") < text.index("Output B]\nOUT-Y")
    swapped = context_pair([{"role": "user", "content": "q"}], "OUT-Y", "OUT-X")[1]["content"]
    assert swapped.index("Assistant A's Answer]\nOUT-Y") < swapped.index("Assistant B's Answer]\nOUT-X")


def test_answers_with_braces_are_inserted_verbatim():
    code = "def f():\n    return {'a': 1}  # {answer}"
    assert code in mtbench_single(["Write code"], [code], 1)[1]["content"]


def test_cache_keys_depend_on_judge_messages_and_params(tmp_path):
    messages = [{"role": "user", "content": "x"}]
    key = request_key("judge@1", messages, {"temperature": 0, "max_tokens": 9})
    assert key == request_key("judge@1", json.loads(json.dumps(messages)),
                              {"max_tokens": 9, "temperature": 0})
    assert key != request_key("judge@2", messages, {"temperature": 0, "max_tokens": 9})
    assert key != request_key("judge@1", messages, {"temperature": 0, "max_tokens": 10})
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        cache.put(key, {"text": "Rating: [[4]]"})
    with ResponseCache(tmp_path / "c.sqlite") as cache:  # persisted across opens
        assert cache.get(key) == {"text": "Rating: [[4]]"}
        assert cache.get("missing") is None
        assert len(cache) == 1


def test_model_fingerprint_follows_contents_not_names(tmp_path, monkeypatch):
    from xwin.judge import session

    def folder(name, weights):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text('{"hidden_size": 8}')
        (d / "model.safetensors").write_bytes(weights)
        return d

    sft = session.folder_fingerprint(folder("sft", b"\x01" * 4096))
    assert session.folder_fingerprint(folder("copy-of-sft", b"\x01" * 4096)) == sft
    # the same shapes with other weights (an RS model of the same SFT) must not collide
    assert session.folder_fingerprint(folder("rs", b"\x01" * 4095 + b"\x02")) != sft
    # files above the full-hash limit are sampled at spread offsets, still by content
    monkeypatch.setattr(session, "FULL_HASH_LIMIT", 1024)
    monkeypatch.setattr(session, "CHUNK", 64)
    big_a = session.folder_fingerprint(folder("big-a", bytes(200_000)))
    assert session.folder_fingerprint(folder("big-b", bytes(100_000) + b"\x07" * 100_000)) != big_a
