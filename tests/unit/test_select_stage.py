"""The select stage on a hand-checkable scored set: known scores -> known RS examples and DPO
pairs for every strategy, stats, the best-of-N numbers and the plots.

Fixture scores (ranked best first, ties by response index):
  a: [0.5, 2.0, -1.0, 2.0, 0.0]  ranking 1, 3, 0, 4, 2   median 0.5
  b: [1.0, 1.0]                  all tied: an RS example, never a DPO pair
  c: [3.0, -2.0, 1.0]            ranking 0, 2, 1         median 1.0
  d: []                          nothing to select
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

import pytest
from xwin_set_helpers import fetch, write_jsonl, write_spec

from xwin.cli import stage_main
from xwin.core.errors import EXIT_USER_ERROR
from xwin.data.io import read_records
from xwin.data.schemas import Conversation, MultiwiseRecord, PreferencePair
from xwin.stages.registry import run_stage
from xwin.stages.select import SelectConfig, select

SCORES = {"a": [0.5, 2.0, -1.0, 2.0, 0.0], "b": [1.0, 1.0], "c": [3.0, -2.0, 1.0], "d": []}


def scored_rows(order=("a", "b", "c", "d")):
    return [
        {
            "id": rid,
            "context": [{"role": "user", "content": f"question {rid}"}],
            "responses": [{"text": f"{rid}{k}", "score": s} for k, s in enumerate(SCORES[rid])],
        }
        for rid in order
    ]


def run_select(tmp_path: Path, rows=None, **config) -> tuple[dict, Path]:
    scored = write_jsonl(tmp_path / "scored.jsonl", rows or scored_rows())
    spec = write_spec(tmp_path, "select", {"scored": str(scored)}, config)
    metrics = run_stage("select", spec)
    return metrics, fetch(tmp_path, "runs/test/select")


def pair_ids(out: Path) -> list[str]:
    return [p.id for p in read_records(out / "dpo.jsonl", PreferencePair)]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"dpo_strategy": "best-worst"}, ["a:1>2", "c:0>1"]),
        ({"dpo_strategy": "best-vs-rank", "dpo_rank": 2}, ["c:0>2"]),  # a's second best ties
        ({"dpo_strategy": "best-vs-rank", "dpo_rank": -1}, ["a:1>2", "c:0>1"]),
        ({"dpo_strategy": "best-vs-rank", "dpo_quantile": 0.5}, ["a:1>0", "c:0>2"]),
        ({"dpo_strategy": "all-pairs-above-margin", "dpo_min_margin": 1.5},
         ["a:1>2", "a:3>2", "a:1>4", "a:3>4", "c:0>1", "c:2>1", "c:0>2"]),
        ({"dpo_strategy": "all-pairs-above-margin", "dpo_min_margin": 1.5,
          "dpo_max_pairs_per_prompt": 1}, ["a:1>2", "c:0>1"]),
        ({"dpo_strategy": "best-worst", "dpo_min_margin": 4.0}, ["c:0>1"]),
    ],
)
def test_dpo_pairs_for_every_strategy(tmp_path, config, expected):
    metrics, out = run_select(tmp_path, **config)
    assert pair_ids(out) == expected
    assert metrics["dpo_pairs"] == len(expected)


def test_pairs_carry_texts_scores_and_indices(tmp_path):
    _, out = run_select(tmp_path)
    first = next(read_records(out / "dpo.jsonl", PreferencePair))
    assert (first.chosen, first.rejected) == ("a1", "a2")
    assert (first.chosen_score, first.rejected_score) == (2.0, -1.0)
    assert first.context[0].content == "question a" and first.source == "rm"
    assert first.meta == {"strategy": "best-worst", "chosen_index": 1, "rejected_index": 2}


def test_best_vs_random_is_seeded_per_context_not_by_order(tmp_path):
    _, out = run_select(tmp_path / "1", dpo_strategy="best-vs-random", dpo_seed=7)
    _, shuffled = run_select(tmp_path / "2", rows=scored_rows(("c", "d", "b", "a")),
                             dpo_strategy="best-vs-random", dpo_seed=7)
    pairs = {p.id: p for p in read_records(out / "dpo.jsonl", PreferencePair)}
    assert pairs == {p.id: p for p in read_records(shuffled / "dpo.jsonl", PreferencePair)}
    for pair_id in pairs:
        rid, chosen, rejected = pair_id[0], int(pair_id[2]), int(pair_id[4])
        assert chosen == {"a": 1, "c": 0}[rid]
        assert SCORES[rid][rejected] < SCORES[rid][chosen]
    records = [MultiwiseRecord.model_validate(r) for r in scored_rows()]
    drawn = set()
    for seed in range(12):
        _, pairs_of_seed, _ = select(records, SelectConfig(dpo_strategy="best-vs-random", dpo_seed=seed))
        drawn.add(tuple(p.id for p in pairs_of_seed))
    assert len(drawn) > 1  # the seed matters


def test_rs_takes_the_best_response_with_ties_to_the_lower_index(tmp_path):
    metrics, out = run_select(tmp_path)
    rs = list(read_records(out / "rs.jsonl", Conversation))
    assert [(c.id, c.messages[-1].content) for c in rs] == [("a", "a1"), ("b", "b0"), ("c", "c0")]
    assert [m.role for m in rs[0].messages] == ["user", "assistant"]
    assert rs[0].meta == {"score": 2.0, "median_score": 0.5, "response_index": 1, "responses": 5}
    assert metrics["rs_examples"] == 3 and metrics["rs_dropped_no_responses"] == 1


def test_rs_minimum_score_and_margin_over_median(tmp_path):
    metrics, out = run_select(tmp_path / "score", rs_min_score=1.5)
    assert [c.id for c in read_records(out / "rs.jsonl", Conversation)] == ["a", "c"]
    assert metrics["rs_dropped_below_min_score"] == 1
    metrics, out = run_select(tmp_path / "margin", rs_min_margin_over_median=1.6)
    assert [c.id for c in read_records(out / "rs.jsonl", Conversation)] == ["c"]
    assert metrics["rs_dropped_below_min_margin_over_median"] == 2


def test_stats_count_and_summarise_gaps(tmp_path):
    metrics, out = run_select(tmp_path)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["contexts"] == 4 and stats["responses"] == 10
    assert stats["dpo"]["pairs"] == 2 and stats["dpo"]["contexts_without_pairs"] == 2
    gap = stats["dpo"]["score_gap"]  # gaps 3.0 (a) and 5.0 (c)
    assert (gap["min"], gap["mean"], gap["max"]) == (3.0, 4.0, 5.0)
    assert metrics["dpo_gap_mean"] == 4.0
    every = [s for v in SCORES.values() for s in v]
    assert stats["scores"]["mean"] == pytest.approx(statistics.fmean(every))


def test_best_of_n_curve_matches_enumeration(tmp_path):
    metrics, out = run_select(tmp_path)
    curve = json.loads((out / "best_of_n.json").read_text())
    assert [p["n"] for p in curve] == [1, 2, 4, 5]
    for point in curve:
        k = point["n"]
        per_context = [statistics.fmean(max(c) for c in itertools.combinations(s, k))
                       for s in SCORES.values() if len(s) >= k]
        assert point["expected_max"] == pytest.approx(statistics.fmean(per_context))
        assert point["contexts"] == len(per_context)
    assert metrics["best_of_5"] == 2.0  # only a has 5 responses; its best is 2.0


def test_plots_are_pngs(tmp_path):
    _, out = run_select(tmp_path)
    for name in ("reward_hist.png", "best_of_n.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dpo_strategy": "best-vs-rank"}, "exactly one of dpo_rank or dpo_quantile"),
        ({"dpo_strategy": "best-vs-rank", "dpo_rank": 1}, "must rank below the best"),
        ({"dpo_strategy": "best-worst", "dpo_rank": 3}, "apply to best-vs-rank"),
        ({"dpo_strategy": "best-median"}, "dpo_strategy"),
    ],
)
def test_bad_configs_fail_permanently(tmp_path, capsys, config, message):
    scored = write_jsonl(tmp_path / "scored.jsonl", scored_rows())
    spec = write_spec(tmp_path, "select", {"scored": str(scored)}, config)
    assert stage_main("select", spec) == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


def test_unscored_input_is_refused_naming_the_record(tmp_path, capsys):
    rows = scored_rows()
    del rows[2]["responses"][1]["score"]
    scored = write_jsonl(tmp_path / "scored.jsonl", rows)
    spec = write_spec(tmp_path, "select", {"scored": str(scored)}, {})
    assert stage_main("select", spec) == EXIT_USER_ERROR
    assert "record 'c': response 1 has no score" in capsys.readouterr().err
