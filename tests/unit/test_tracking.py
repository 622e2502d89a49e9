"""The training tracker: metrics.jsonl and TensorBoard always, MLflow and W&B when configured,
each holding the same numbers; a failing tracker never stops training; a resumed run's sinks
hold the whole run once; the tracking settings carry no secret and never change a stage's key."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from xwin.train.config import TrackingConfig, TrainConfig
from xwin.train.tracking import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    JsonlSink,
    Tracker,
    flat_params,
    open_tracker,
    tracked_name,
)

RECORDS = [
    {"step": 1, "epoch": 0.25, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 900.0},
    {"step": 2, "epoch": 0.5, "loss": 2.0, "lr": 9e-4, "tokens_per_s": 950.0, "eval_loss": 2.25},
    {"step": 3, "epoch": 0.75, "loss": 1.25, "lr": 8e-4, "tokens_per_s": 1000.0, "accuracy": 0.75},
]


def read_events(folder) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar series in TensorBoard's own reader."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def run_through(tracker: Tracker, records=RECORDS, restored=()) -> None:
    tracker.restart(list(restored))
    tracker.log_config({"learning_rate": 1e-3, "stage": "sft"})
    for record in records:
        tracker.append(record)
    tracker.log_summary({"train_loss": records[-1]["loss"]})
    tracker.close()


def test_metric_names_group_as_tensorboard_panels():
    assert tracked_name("loss") == "train/loss"
    assert tracked_name("eval_reward_accuracy") == "eval/reward_accuracy"
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}


def test_tensorboard_events_hold_the_values_of_metrics_jsonl(tmp_path):
    tracker = open_tracker(tmp_path, True, TrackingConfig(), run_name="r/sft", group="r", stage="sft")
    run_through(tracker)
    written = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert written == RECORDS
    series = read_events(tmp_path / TENSORBOARD_DIR)
    assert series["train/loss"] == [(r["step"], r["loss"]) for r in written]
    assert series["eval/loss"] == [(2, 2.25)]
    assert series["train/accuracy"] == [(3, 0.75)]
    assert [s for s, _ in series["train/lr"]] == [1, 2, 3]
    assert series["train/lr"][1][1] == pytest.approx(9e-4)


def test_only_the_main_process_writes(tmp_path):
    tracker = open_tracker(tmp_path, False, TrackingConfig(), run_name="r/sft", group="r", stage="sft")
    run_through(tracker)
    assert tracker.records == RECORDS  # a checkpoint on any rank saves the history
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_holds_every_step_once(tmp_path):
    """The first attempt logged steps 1-2 and was killed; the restart hands back its records."""
    first = open_tracker(tmp_path, True, TrackingConfig(), run_name="r/sft", group="r", stage="sft")
    first.restart([])
    for record in RECORDS[:2] + [{"step": 3, "loss": 9.0}]:  # step 3 came after the checkpoint
        first.append(record)
    # no close: the process was killed
    again = open_tracker(tmp_path, True, TrackingConfig(), run_name="r/sft", group="r", stage="sft")
    run_through(again, records=RECORDS[2:], restored=RECORDS[:2])
    assert read_events(tmp_path / TENSORBOARD_DIR)["train/loss"] == [(r["step"], r["loss"]) for r in RECORDS]
    assert [json.loads(x)["step"] for x in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1, 2, 3]


class Broken:
    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        def fail(*_):
            self.calls += 1
            raise ConnectionError("tracking server unreachable")
        return fail


def test_a_failing_tracker_warns_once_and_training_goes_on(tmp_path, caplog):
    broken = Broken()
    tracker = Tracker([JsonlSink(tmp_path / METRICS_FILE)], {"mlflow": broken})
    with caplog.at_level(logging.WARNING, logger="xwin.train.tracking"):
        run_through(tracker)
    assert broken.calls == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "mlflow" in warnings[0] and "unreachable" in warnings[0]
    assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 3


def test_metrics_jsonl_failing_is_an_error(tmp_path):
    (tmp_path / "blocked").write_text("a file where the folder should be")
    tracker = Tracker([JsonlSink(tmp_path / "blocked" / METRICS_FILE)])
    with pytest.raises(OSError):
        tracker.restart([])


def test_a_tracker_that_cannot_start_is_skipped_with_a_warning(tmp_path, caplog):
    config = TrackingConfig(mlflow={"tracking_uri": "nosuchscheme://x"})
    with caplog.at_level(logging.WARNING, logger="xwin.train.tracking"):
        tracker = open_tracker(tmp_path, True, config, run_name="r/sft", group="r", stage="sft")
    assert "mlflow" not in tracker.optional
    assert any("mlflow" in r.getMessage() for r in caplog.records)
    run_through(tracker)
    assert (tmp_path / METRICS_FILE).exists()


def test_mlflow_file_store_run_has_the_metrics_and_the_config(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    config = TrackingConfig(mlflow={"tracking_uri": uri, "experiment": "demo"})
    run_through(open_tracker(tmp_path / "work", True, config, run_name="r1/sft", group="r1", stage="sft"))

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.run_name == "r1/sft" and run.info.status == "FINISHED"
    assert run.data.tags["xwin.run"] == "r1" and run.data.tags["xwin.stage"] == "sft"
    assert run.data.params["learning_rate"] == "0.001"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], r["loss"]) for r in RECORDS]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [(2, 2.25)]
    assert run.data.tags["final.train_loss"] == "1.25"


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = TrackingConfig(wandb={"project": "xwin-test", "mode": "offline", "dir": str(tmp_path / "wb")})
    tracker = open_tracker(tmp_path / "work", True, config, run_name="r1/sft", group="r1", stage="sft")
    assert "wandb" in tracker.optional, "wandb did not start"
    run_through(tracker)
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("run-*.wandb")  # what `wandb sync` uploads
    # wandb ships no reader of its offline log (protobuf records); its history rows and summary
    # hold the names and JSON-encoded values
    raw = log_file.read_bytes()
    assert b"train/loss" in raw and b"eval/loss" in raw and b"final/train_loss" in raw
    assert b"2.25" in raw and b"1.25" in raw


def test_tracking_settings_hold_no_secret():
    with pytest.raises(ValidationError, match="api_key"):
        TrackingConfig(wandb={"project": "p", "api_key": "secret"})
    with pytest.raises(ValidationError):
        TrainConfig(tracking={"mlflow": {"tracking_uri": ""}})


def test_tracking_is_no_part_of_a_stage_key_and_the_pipeline_default_reaches_every_trainer(tmp_path):
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store
    from xwin.config import PipelineConfig, load_config
    from xwin.controller.graph import make_plan

    store = open_store(StoreConfig(root=tmp_path / "store"))
    plain = make_plan(load_config(None, []), store)
    uri = "file:/tmp/mlruns"
    config = load_config(None, [f"tracking.mlflow.tracking_uri={uri}", "dpo.tracking.wandb.project=own"])
    tracked = make_plan(config, store)
    assert plain.keys() == tracked.keys()
    # the run record rebuilds the same config (xwin resume)
    assert PipelineConfig(**config.model_dump(mode="json")).model_dump() == config.model_dump()
    for name in ("sft", "rm", "rs"):
        assert tracked.stages[name].config["tracking"]["mlflow"]["tracking_uri"] == uri
    assert tracked.stages["dpo"].config["tracking"] == {"mlflow": None, "wandb": {
        "project": "own", "entity": None, "mode": "offline", "dir": None}}
    assert "tracking" not in tracked.stages["sample"].config
