"""The run report respects eval's judge gate: a failed gate is in the headline, and no judged
number reaches the stage table; a passed gate changes nothing."""

from __future__ import annotations

import pytest

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.controller.report import build_report
from xwin.controller.state import Attempt, RunRecord, StageState

JUDGED = {"mtbench/sft/score": 1.0, "alpaca/sft/win_rate": 0.5, "alpaca/sft/lc_win_rate": 0.5,
          "mtbench/sft_vs_rs/win_rate": 0.5}


@pytest.fixture
def store(tmp_path):
    return open_store(StoreConfig(root=tmp_path / "store"))


def eval_report(store, tmp_path, metrics: dict, fragment: str) -> str:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "results.json").write_text("{}")
    (folder / "report.md").write_text(fragment)
    store.commit("eval/k", folder, producer="eval", metadata={"metrics": metrics})
    attempt = Attempt(number=1, started_at="2026-01-01T00:00:00+00:00",
                      ended_at="2026-01-01T00:01:00+00:00", status="succeeded")
    record = RunRecord(
        run_id="r1", name="demo", created_at="2026-01-01T00:00:00+00:00",
        updated_at="2026-01-01T00:01:00+00:00", ended_at="2026-01-01T00:01:00+00:00",
        status="succeeded", config={}, workdir=str(tmp_path / "work"),
        stages={"eval": StageState(name="eval", key="eval/k", status="succeeded",
                                   attempts=[attempt], metrics=metrics)})
    return build_report(record, store, tmp_path / "report").read_text()


def test_a_failed_judge_gate_is_in_the_headline_and_keeps_judged_numbers_out_of_it(store, tmp_path):
    metrics = {**JUDGED, "judge/gate_passed": 0.0, "judge/calibration_accuracy": 0.5,
               "judge/calibration_swap_agreement": 0.0, "judge/unparseable_share": 0.0,
               "reward/sft/mean": 0.25}
    md = eval_report(store, tmp_path, metrics, "## Evaluation (judge: `j`): judge unreliable\n")
    headline, rest = md.split("## Stages", 1)
    assert ("- **judge unreliable** (eval): calibration accuracy 50.0%, swap agreement 0.0% on "
            "the calibration set, unparseable replies 0.0%") in headline
    (row,) = [line for line in rest.splitlines() if line.startswith("| eval |")]
    assert "judge/calibration_accuracy=0.5" in row and "reward/sft/mean=0.25" in row
    assert "mtbench/" not in row and "alpaca/" not in row
    assert "## Evaluation (judge: `j`): judge unreliable" in rest  # eval's own fragment


def test_a_passed_judge_gate_changes_nothing(store, tmp_path):
    metrics = {**JUDGED, "judge/gate_passed": 1.0, "judge/calibration_accuracy": 1.0}
    md = eval_report(store, tmp_path, metrics, "## Evaluation (judge: `j`)\n")
    assert "unreliable" not in md
    (row,) = [line for line in md.splitlines() if line.startswith("| eval |")]
    assert "alpaca/sft/win_rate=0.5" in row
