"""Where the training loop's metrics go: one `Tracker` the loop calls (the config once, a record
per logged step, a summary and close at the end), writing to several sinks on rank 0:

    metrics.jsonl   always; one JSON object per logged step, what the controller's report reads
    tensorboard/    always; TensorBoard event files, shipped inside the stage's artifact
    MLflow          when `tracking.mlflow` is set (a `file:` URI works with no server)
    W&B             when `tracking.wandb` is set (mode offline writes a run folder, no network)

metrics.jsonl is the record the pipeline depends on: a failure writing it is an error. Every
other sink is a view of the same numbers: its failure (not installed, server down, disk full)
is logged once and that sink is dropped; training goes on. On resume the loop hands back the
records restored from the checkpoint and every sink starts over from them, so each holds the
whole run, not just the last attempt.

Metric names in the trackers group like TensorBoard's panels: `train/loss`, `train/lr`,
`eval/loss` (metrics.jsonl keeps its flat names: `loss`, `lr`, `eval_loss`). Secrets (an MLflow
token, the W&B API key) are read by those libraries from the environment, never from a config.

The TensorBoard writer is tensorboardX: it needs only protobuf and numpy, where
torch.utils.tensorboard pulls in the whole `tensorboard` server package (grpcio, werkzeug, ...)
that a trainer image never runs; the event files are the same format.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from xwin.train.config import MlflowConfig, TrackingConfig, WandbConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
NOT_METRICS = ("step",)  # the x axis, not a series


def tracked_name(key: str) -> str:
    """A metrics.jsonl key as the trackers show it: eval_loss -> eval/loss, loss -> train/loss."""
    return f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"


def numeric_items(record: dict[str, Any]) -> dict[str, float]:
    """The record's plottable values under their tracked names (a bool or a string is no series)."""
    return {tracked_name(k): float(v) for k, v in record.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as `a.b: value` strings: the form MLflow params take."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


class Sink(Protocol):
    def restart(self, records: list[dict]) -> None: ...  # the run so far (empty on a fresh start)
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log(self, record: dict) -> None: ...
    def log_summary(self, metrics: dict[str, float]) -> None: ...
    def close(self, failed: bool) -> None: ...


class JsonlSink:
    """metrics.jsonl: each record appended and flushed at once, so a crash loses at most one."""

    def __init__(self, path: Path):
        self.path = path

    def restart(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def log_config(self, config: dict[str, Any]) -> None:
        pass  # the stage's config is in its spec and its manifest

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_summary(self, metrics: dict[str, float]) -> None:
        pass  # the manifest holds the final metrics

    def close(self, failed: bool) -> None:
        pass


class TensorBoardSink:
    """Event files under `folder`; a restart replaces them with a replay of the restored records
    (a resumed run on another node has none of the first attempt's files)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writer = None

    def restart(self, records: list[dict]) -> None:
        from tensorboardX import SummaryWriter

        if self.writer is not None:
            self.writer.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.writer = SummaryWriter(logdir=str(self.folder), flush_secs=30)
        for record in records:
            self.log(record)

    def log_config(self, config: dict[str, Any]) -> None:
        # a fenced block: TensorBoard's text panel renders markdown
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, record: dict) -> None:
        for name, value in numeric_items(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def log_summary(self, metrics: dict[str, float]) -> None:
        self.writer.add_text("final_metrics", "\n".join(f"- {k}: {v:.6g}" for k, v in sorted(metrics.items())), 0)

    def close(self, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowSink:
    """One MLflow run per stage attempt, through MlflowClient (no global active-run state).
    Tags name the pipeline run and the stage, so a run's stages can be found together."""

    def __init__(self, config: MlflowConfig, run_name: str, tags: dict[str, str]):
        from mlflow.tracking import MlflowClient

        if config.tracking_uri.startswith("file:"):
            # MLflow 3 keeps its file store (the one store needing neither a server nor a
            # database driver) behind this opt-in; a file: URI in the config is that opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=config.tracking_uri)
        experiment = self.client.get_experiment_by_name(config.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(config.experiment))
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def restart(self, records: list[dict]) -> None:
        for record in records:
            self.log(record)

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow caps a param's value (6000 characters) and a batch (100 params)
        params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, record: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record["step"]) for k, v in numeric_items(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_summary(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import RunTag

        # final metrics as tags too: the run list shows them without opening a plot
        self.client.log_batch(self.run_id, tags=[RunTag(f"final.{k}", f"{v:.6g}") for k, v in metrics.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbSink:
    """One W&B run per stage attempt, grouped by the pipeline run. Offline mode writes
    `<dir>/wandb/offline-run-*` (uploaded later by `wandb sync`)."""

    def __init__(self, config: WandbConfig, run_name: str, group: str, job_type: str, default_dir: Path):
        import wandb

        folder = Path(config.dir) if config.dir else default_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=config.project, entity=config.entity, mode=config.mode, dir=str(folder),
                              name=run_name, group=group, job_type=job_type,
                              settings=wandb.Settings(console="off", silent=True))

    def restart(self, records: list[dict]) -> None:
        for record in records:
            self.log(record)

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log(self, record: dict) -> None:
        self.run.log(numeric_items(record), step=record["step"])

    def log_summary(self, metrics: dict[str, float]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items()})

    def close(self, failed: bool) -> None:
        import wandb

        self.run.finish(exit_code=1 if failed else 0)
        # finish() returns before wandb's service process has written the run out; teardown
        # waits for it, so the run is whole before the stage goes on (and could be killed)
        wandb.teardown()


class Tracker:
    """What the loop calls. `records` (every record of the run, on every rank) is what a
    checkpoint saves; only the main process writes anything."""

    def __init__(self, required: Iterable[Sink] = (), optional: dict[str, Sink] | None = None):
        self.required = list(required)
        self.optional = dict(optional or {})
        self.records: list[dict] = []
        self.closed = False

    def _each(self, call: str, *args: Any) -> None:
        for sink in self.required:
            getattr(sink, call)(*args)
        for name, sink in list(self.optional.items()):
            try:
                getattr(sink, call)(*args)
            except Exception as e:  # a view of the numbers must never stop training
                log.warning("tracker %s failed (%s: %s); training goes on without it", name, type(e).__name__, e)
                del self.optional[name]

    def restart(self, records: list[dict]) -> None:
        self.records = list(records)
        self._each("restart", self.records)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def append(self, record: dict) -> None:
        self.records.append(record)
        self._each("log", record)

    def log_summary(self, metrics: dict[str, float]) -> None:
        self._each("log_summary", metrics)

    def close(self, failed: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self._each("close", failed)


def _open(name: str, build) -> Sink | None:
    """A configured tracker, or None with one warning if it cannot start."""
    try:
        return build()
    except ImportError as e:
        log.warning("tracker %s is configured but cannot be imported (%s): pip install 'xwin[tracking]'; "
                    "training goes on without it", name, e)
    except Exception as e:
        log.warning("tracker %s could not start (%s: %s); training goes on without it", name, type(e).__name__, e)
    return None


def open_tracker(folder: Path, is_main: bool, config: TrackingConfig, *, run_name: str, group: str,
                 stage: str) -> Tracker:
    """The tracker of one training process: on the main process metrics.jsonl and TensorBoard
    under `folder` plus the configured trackers; on the others, none (records are still kept)."""
    if not is_main:
        return Tracker()
    optional: dict[str, Sink] = {"tensorboard": TensorBoardSink(folder / TENSORBOARD_DIR)}
    tags = {"xwin.run": group, "xwin.stage": stage}
    if config.mlflow is not None and (sink := _open("mlflow", lambda: MlflowSink(config.mlflow, run_name, tags))):
        optional["mlflow"] = sink
    if config.wandb is not None and (sink := _open(
            "wandb", lambda: WandbSink(config.wandb, run_name, group, stage, folder))):
        optional["wandb"] = sink
    return Tracker([JsonlSink(folder / METRICS_FILE)], optional)
