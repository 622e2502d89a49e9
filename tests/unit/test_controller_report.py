"""The run report is built from committed artifacts only: the numbers in report.md are the ones
the stages wrote, each plot exists, and a missing part is said to be missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.controller.report import best_of_n_points, build_report, write_report
from xwin.controller.state import Attempt, RunRecord, RunStore, StageState


@pytest.fixture
def store(tmp_path):
    return open_store(StoreConfig(root=tmp_path / "store"))


def commit(store, key: str, folder: Path, files: dict[str, str], metrics=None) -> None:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    store.commit(key, folder, producer=key.split("/")[0], metadata={"metrics": metrics or {}})


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def stage(name: str, status: str = "succeeded", seconds: int = 90, **metrics) -> StageState:
    attempts = [] if status == "cached" else [Attempt(
        number=1, started_at="2026-01-01T00:00:00+00:00",
        ended_at=f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}+00:00", status="succeeded")]
    return StageState(name=name, key=f"{name}/k", status=status, attempts=attempts, metrics=metrics)


def test_report_shows_what_the_stages_committed(store, tmp_path):
    sft_rows = [{"step": s, "loss": 2.0 - 0.1 * s, "lr": 1e-5, "tokens_per_s": 900.0} for s in range(1, 6)]
    sft_rows.append({"step": 5, "eval_loss": 1.7})
    commit(store, "sft/k", tmp_path / "sft", {"metrics.jsonl": jsonl(sft_rows), "config.json": "{}"})
    rm_rows = [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.5, "eval_accuracy": 0.75}]
    commit(store, "rm/k", tmp_path / "rm", {"metrics.jsonl": jsonl(rm_rows)}, {"eval_accuracy": 0.75})
    curve = [{"n": 1, "expected_max": 0.5, "contexts": 4}, {"n": 2, "expected_max": 0.875, "contexts": 4},
             {"n": 4, "expected_max": 1.25, "contexts": 4}]
    commit(store, "select/k", tmp_path / "select", {"best_of_n.json": json.dumps(curve)})
    results = {"reward": {
        "sft": {"mean": -0.5, "n": 4, "scores": [1.0, -2.0, 0.0, -1.0], "prompts_mean": -0.5, "prompts_n": 2},
        "rs": {"mean": 0.25, "n": 4, "scores": [0.0, 0.0, 0.5, 0.5], "prompts_mean": 0.5, "prompts_n": 2},
        "dpo": {"mean": 0.625, "n": 4}}}
    commit(store, "eval/k", tmp_path / "eval", {"results.json": json.dumps(results),
                                                 "report.md": "## Evaluation (judge: `j`)\n\nwin rates here"})
    store.put_record("timings/prepare/k", json.dumps({"run_id": "older-run", "elapsed_s": 42.0}).encode())
    record = RunRecord(
        run_id="r1", name="demo", created_at="2026-01-01T00:00:00+00:00",
        updated_at="2026-01-01T00:10:00+00:00", ended_at="2026-01-01T00:10:00+00:00",
        status="succeeded", config={}, workdir=str(tmp_path / "work"),
        stages={"prepare": stage("prepare", "cached"), "sft": stage("sft", train_loss=1.5),
                "rm": stage("rm", eval_accuracy=0.75), "select": stage("select"),
                "rs": stage("rs"), "eval": stage("eval", seconds=125)})

    out = tmp_path / "report"
    md = build_report(record, store, out).read_text()

    assert "wall time 10m00s" in md
    assert "| prepare | cached | 0 | 42s (cached, from older-run) |" in md
    assert "| eval | succeeded | 1 | 2m05s |" in md
    assert "**RM held-out pairwise accuracy: 0.750**" in md
    for n, value in ((1, "0.500"), (2, "0.875"), (4, "1.250")):
        assert f"| {n} | {value} |" in md
    assert "| sft | -0.500 | 0.500 | 2 | -0.500 | 4 |" in md  # the held-out prompts: 0 and -1
    assert "| rs | 0.500 | 0.000 | 2 | 0.250 | 4 |" in md
    assert "| dpo |  |  |  | 0.625 | 4 |" in md  # no per-answer scores: the overall mean only
    assert "win rates here" in md  # eval's own fragment
    assert "- rs: no committed output" in md
    for plot in ("loss_sft.png", "loss_rm.png", "best_of_n.png", "rewards.png", "timings.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG", plot
        assert f"]({plot})" in md
    assert not (out / "loss_rs.png").exists()


def test_write_report_commits_it_and_copies_it_to_the_run_folder(store, tmp_path):
    runs = RunStore(store, tmp_path / "work")
    record = RunRecord(run_id="r2", name="demo", created_at="2026-01-01T00:00:00+00:00",
                       updated_at="2026-01-01T00:00:00+00:00", config={}, workdir=str(tmp_path / "work"),
                       stages={"select": stage("select")})
    path = write_report(record, store, runs)
    assert path == tmp_path / "work" / "runs" / "r2" / "report" / "report.md"
    assert "(no best_of_n.json in the select output)" in path.read_text()
    assert [f.path for f in store.manifest("reports/r2").files] == ["report.md", "timings.png"]


def test_best_of_n_curve_formats():
    assert best_of_n_points([{"n": 2, "expected_max": 1.0}, {"n": 1, "expected_max": 0.5}]) == [(1, 0.5), (2, 1.0)]
    assert best_of_n_points({"curve": [{"n": 1, "mean": 3}]}) == [(1, 3.0)]
    assert best_of_n_points({"1": 0.1, "4": 0.4}) == [(1, 0.1), (4, 0.4)]
    assert best_of_n_points({"something": "else"}) == []
