"""How a controller ends: a signal under an executor whose stages outlive it detaches (the stage
keeps running, the record says "detached"), under the local executor it stops the stage; an
outage of the executor's backend is waited out with capped backoff, and given up after the
patience, saying why; any other error is recorded before it propagates.

The executors here implement the Executor interface around a stage that commits a real
artifact to a real local store; the signals are real signals to this process."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from xwin.config import PipelineConfig
from xwin.controller.pipeline import Controller, OutageClock, new_record
from xwin.controller.state import RunStore
from xwin.core.errors import EXIT_DETACHED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError
from xwin.executors.base import Executor, StageJob, StageResult

JOBS = Path(__file__).resolve().parents[2] / "jobs"


class BackendDown(ConnectionError):
    """What a cluster client raises once its own retries are spent."""


class StageExecutor(Executor):
    """Runs the stage as `stage(job)` in this process; the stage commits its output."""

    def __init__(self, store, stage=None, outlive: bool = False):
        self.store = store
        self.stage = stage or (lambda job: None)
        self.stages_outlive_controller = outlive
        self.cancelled: list[str] = []
        self.runs: list[StageJob] = []

    def run(self, job: StageJob) -> StageResult:
        self.runs.append(job)
        if (result := self.stage(job)) is not None:
            return result
        folder = Path(job.log_dir).parent / "out" / job.stage
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done.txt").write_text("ok\n")
        self.store.commit(job.spec.output, folder, producer=job.stage)
        return StageResult(status="succeeded", exit_code=0)

    def cancel(self, run_id: str) -> None:
        self.cancelled.append(run_id)

    def unreachable(self, error: BaseException) -> str | None:
        return "cluster API unreachable" if isinstance(error, BackendDown) else None


def controller(tmp_path: Path, executor_of, **run) -> Controller:
    config = PipelineConfig(
        run={"name": "life", "workdir": str(tmp_path / "work"), "only": ["prepare"],
             "retry_backoff_s": 0.05, **run},
        store={"root": str(tmp_path / "store")}, executor={"profiles_dir": str(JOBS)})
    from xwin.artifacts.factory import open_store

    store = open_store(config.store)
    runs = RunStore(store, tmp_path / "work")
    seen = []
    control = Controller(config, new_record(config, runs), store, runs, executor=executor_of(store),
                         progress=lambda record: seen.append(record.model_copy(deep=True)))
    control.seen = seen  # every saved state, in order
    return control


def stored(control: Controller):
    return control.runs.load(control.record.run_id)


def test_sigterm_detaches_from_a_stage_that_outlives_the_controller(tmp_path):
    def stage(job):
        os.kill(os.getpid(), signal.SIGTERM)  # a node drain while the stage runs
        time.sleep(10)  # the handler ends the follow at once
        raise AssertionError("the follow went on after SIGTERM")

    control = controller(tmp_path, lambda store: StageExecutor(store, stage, outlive=True))
    started = time.monotonic()
    assert control.execute() == EXIT_DETACHED
    assert time.monotonic() - started < 5

    record = stored(control)
    assert record.status == "detached"
    assert "`xwin resume life-" in record.error and "`xwin cancel life-" in record.error
    prepare = record.stages["prepare"]
    assert prepare.status == "detached"
    assert prepare.attempts[-1].status == "running"  # for the next controller to adopt
    assert control.executor.cancelled == []  # nothing was deleted


def test_sigint_stops_a_local_stage_and_the_run_is_interrupted(tmp_path):
    def stage(job):
        os.kill(os.getpid(), signal.SIGINT)
        return StageResult(status="cancelled", reason="run cancelled")  # as the processes end

    control = controller(tmp_path, lambda store: StageExecutor(store, stage))
    assert control.execute() == EXIT_INTERRUPTED
    record = stored(control)
    assert record.status == "interrupted" and record.stages["prepare"].status == "cancelled"
    assert control.executor.cancelled == [record.run_id]


def test_a_backend_outage_is_waited_out_and_the_record_says_so(tmp_path):
    failures = [BackendDown("connection refused")] * 3

    def stage(job):
        if failures:
            raise failures.pop()
        return None  # commits

    control = controller(tmp_path, lambda store: StageExecutor(store, stage, outlive=True),
                         outage_backoff_max_s=0.2, outage_patience_s=30)
    started = time.monotonic()
    assert control.execute() == EXIT_OK
    elapsed = time.monotonic() - started

    waiting = [r.waiting for r in control.seen if r.waiting]
    assert len(waiting) == 3
    assert all(w.startswith("cluster API unreachable since ") and w.endswith("connection refused")
               for w in waiting)
    assert len({w.split(": ")[0] for w in waiting}) == 1  # one outage, one start time
    assert 0.5 <= elapsed < 5  # pauses of 0.2 s (the cap) each
    record = stored(control)
    assert record.status == "succeeded" and record.waiting is None
    assert record.stages["prepare"].status == "succeeded"
    # after each pause nothing was left to adopt (the failed try never started a stage), so a
    # new attempt started; the outage used up none of the stage's retries (max_attempts 2)
    assert [j.attempt for j in control.executor.runs] == [1, 2, 3, 4]
    assert [a.status for a in record.stages["prepare"].attempts] == ["cancelled"] * 3 + ["succeeded"]


def test_past_its_patience_an_outage_fails_the_run_saying_why(tmp_path):
    def stage(job):
        raise BackendDown("connection refused")

    control = controller(tmp_path, lambda store: StageExecutor(store, stage, outlive=True),
                         outage_backoff_max_s=0.1, outage_patience_s=0.5)
    assert control.execute() == EXIT_FAILED
    record = stored(control)
    assert record.status == "failed" and record.waiting is None
    assert re.match(r"cluster API unreachable for 1s \(since 20\d\d-", record.error), record.error
    assert record.error.endswith(f"connection refused; `xwin resume {record.run_id}` continues")


def test_an_unexpected_error_is_recorded_before_it_propagates(tmp_path):
    def stage(job):
        raise KeyError("spec")

    control = controller(tmp_path, lambda store: StageExecutor(store, stage))
    with pytest.raises(KeyError):
        control.execute()
    record = stored(control)
    assert record.status == "failed"
    assert record.error == f"controller error: KeyError: 'spec'; `xwin resume {record.run_id}` continues"
    assert record.stages["prepare"].status == "failed"


def test_outage_pauses_double_up_to_the_cap_until_patience_runs_out():
    outage = OutageClock(backoff_max_s=5, patience_s=3600)
    assert [outage.failed("S3 unreachable") for _ in range(6)] == [1, 2, 4, 5, 5, 5]
    since = outage.since
    assert outage.failed("S3 unreachable") == 5 and outage.since == since  # the same outage
    assert outage.failed("Kubernetes API unreachable") == 1  # another outage: a fresh clock
    assert OutageClock(backoff_max_s=5, patience_s=0).failed("S3 unreachable") is None


def test_an_outage_ends_once_the_backend_answered_after_a_pause():
    outage = OutageClock(backoff_max_s=10, patience_s=3600)
    assert outage.failed("S3 unreachable", answered_at=None) == 1
    outage.resumed()
    before = time.monotonic() - 1  # an answer from before the pause says nothing
    assert outage.failed("S3 unreachable", answered_at=before) == 2
    outage.resumed()
    time.sleep(0.01)
    # the store answered after the pause, then failed again (hours later): a new outage
    assert outage.failed("S3 unreachable", answered_at=time.monotonic()) == 1
    assert outage.elapsed_s < 0.01  # its clock started again


def test_a_run_id_must_be_a_name_not_a_path(tmp_path):
    from xwin.controller.state import check_run_id

    assert check_run_id("xwin-demo.2") == "xwin-demo.2"
    for bad in ("../etc", "a b", "-x", ""):
        with pytest.raises(UserError, match="is not a run id"):
            check_run_id(bad)
