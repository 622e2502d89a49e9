"""The controller: plan a run, run its stages in order through an executor, keep the run record
up to date, retry what may succeed on a second try and stop at what cannot.

Resumable by construction: every finished stage is a committed artifact under a content-address
key, and the record is rewritten at every transition. `xwin resume RUN` re-plans from the record's
config, finds the finished stages in the store, and runs the rest; the unfinished stage restarts
in the same workdir (`<workdir>/work/<run>/<stage>`), where it finds its own checkpoints.

The record in the store is the controller's whole state: a restarted controller pod (fresh
emptyDir) resumes from it alone and adopts the stage Jobs still running instead of creating
second ones. How the controller stops depends on whether its stages outlive it:

- Kubernetes: SIGTERM / SIGINT (a node drain, an eviction, `helm upgrade`, Ctrl-C) *detach*:
  the controller stops watching, records the run and the running stage as "detached" and exits
  with EXIT_DETACHED; the Jobs run on. Only `xwin cancel` deletes Jobs.
- local: the stage processes are the controller's children, so a signal stops them and the
  run is "interrupted".

An outage of the store or the Kubernetes API (beyond the clients' own retries) makes the
controller wait with capped exponential backoff (`run.outage_backoff_max_s`), the record saying
why ("waiting: S3 unreachable since ..."), for up to `run.outage_patience_s`; then it fails
saying so. Any other unexpected error is recorded before it propagates.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xwin.artifacts.stage_io import part_key
from xwin.artifacts.store import StoreUnavailable
from xwin.controller.graph import Plan, PlannedStage, is_committed, make_plan
from xwin.controller.jobs import make_executor, profiles_for, sharded_counts, stage_job
from xwin.controller.lease import (
    Holder,
    Lease,
    LeaseHeld,
    RunBusy,
    kept,
    key_lease_key,
    run_lease_key,
    wait_for_key,
)
from xwin.controller.state import Attempt, RunRecord, RunStore, StageState, controller_identity
from xwin.core.clock import utc_now
from xwin.core.errors import (
    EXIT_DETACHED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    UserError,
)
from xwin.executors.base import Executor, StageJob, StageResult
from xwin.executors.profiles import JobProfile

log = logging.getLogger(__name__)

__all__ = ["Controller", "RunBusy", "lock_holder", "new_record", "run_lock"]


class Detached(BaseException):  # noqa: N818 (not an error: how a signal ends the watch)
    """Raised by the signal handler to stop watching a stage Job at once (a watch can block for
    a minute); a BaseException so that no retry loop on the way up takes it for a failure."""


def timing_record_key(stage_key: str) -> str:
    """How long producing an artifact took, kept beside it, so a later run that reuses the
    artifact can still report what it cost."""
    return f"timings/{stage_key}"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One controller per run on this machine: an exclusive lock the kernel drops when the
    process dies. The fast path; controllers on other machines are fenced by the run's lease
    in the store (Controller._run_lease)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "controller.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunBusy(f"run {run_dir.name} is running in another controller "
                          f"({f.read().strip() or 'unknown pid'}); `xwin cancel {run_dir.name}` "
                          "stops it") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the controller holding the run, or None if none does."""
    path = run_dir / "controller.lock"
    if not path.exists():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def new_record(config, runs: RunStore, run_id: str | None = None) -> RunRecord:
    """A new run's record: `run_id` (a stable id, `xwin run --run-id`) or `<name>-<UTC time>`."""
    now = utc_now()
    run_id = run_id or runs.claim_run_id(config.run.name, now)
    return RunRecord(
        run_id=run_id, name=config.run.name, created_at=now, updated_at=now,
        config=config.model_dump(mode="json"), workdir=str(runs.workdir),
    )


def forced_stages(plan: Plan, force: set[str]) -> set[str]:
    """The stages `--force` names and everything downstream of them (they rerun too)."""
    forced: set[str] = set()
    for stage in plan.stages.values():  # in pipeline order
        if stage.name in force or any(up in forced for up in stage.depends_on):
            forced.add(stage.name)
    return forced


class Controller:
    """Runs one run's plan. `progress(record)` is called at every state change."""

    def __init__(self, config, record: RunRecord, store, runs: RunStore,
                 progress: Callable[[RunRecord], None] | None = None,
                 force: set[str] = frozenset(), executor: Executor | None = None):
        self.config = config
        self.record = record
        self.store = store
        self.runs = runs
        self.progress = progress or (lambda record: None)
        self.force = set(force)
        self.executor = executor or make_executor(config, on_spawn=self._on_spawn,
                                                  on_problem=self._on_problem,
                                                  on_queue=self._on_queue)
        self.profiles = profiles_for(config)
        self.interrupted = False
        self.detaching = False  # a signal asked to detach from the stage Jobs (Kubernetes)
        self._following = False  # inside the executor, following a stage: detach raises there
        self._store_answered: float | None = None  # when a record write last reached the store
        self.run_dir = runs.run_dir(record.run_id)
        self.lease: Lease | None = None  # the run's lease in the store, while execute holds it
        self.lease_lost: str | None = None  # why it was lost: nothing is written after that

    # -- bookkeeping
    def _save(self, best_effort: bool = False) -> None:
        """The record, to the store and the local mirror (neither once the run's lease is lost
        or lapsed). `best_effort`: while the store is unreachable, the mirror alone (a progress
        note must not stop a running stage)."""
        if self._may_write():
            try:
                self.runs.save(self.record)
                self._store_answered = time.monotonic()
            except StoreUnavailable as e:
                if not best_effort:
                    raise
                log.warning("run record kept locally only: %s", e)
                self.runs.save(self.record, local_only=True)
        self.progress(self.record)

    def _may_write(self) -> bool:
        """False once the run's lease is lost, and while it has lapsed by this process's clock
        (the store unreachable): another controller may own the record then. The next save
        after a renewal writes the whole record again."""
        if self.lease_lost is not None:
            return False
        if self.lease is not None and not self.lease.valid():
            log.warning("not writing the run record: the run's lease has lapsed and is not "
                        "renewed yet")
            return False
        return True

    def _on_spawn(self, job: StageJob, pids: list[int]) -> None:
        attempt = self.record.stages[job.stage].attempts[-1]
        attempt.pids = pids
        self._save(best_effort=True)

    def _on_problem(self, job: StageJob, reason: str) -> None:
        """A running stage's trouble (unschedulable pod, image pull): shown by `xwin status`."""
        self.record.stages[job.stage].attempts[-1].reason = reason
        self._save(best_effort=True)

    def _on_queue(self, job: StageJob, state: str) -> None:
        """A running stage's Kueue state (pending quota, admitted, preempted): `xwin status`."""
        self.record.stages[job.stage].attempts[-1].queue = state
        self._save(best_effort=True)

    def plan(self) -> Plan:
        return make_plan(self.config, self.store, shards=sharded_counts(self.profiles), force=self.force)

    def _merge_plan(self, plan: Plan) -> None:
        """Fold the plan into the record, keeping what an earlier controller recorded."""
        for name, planned in plan.stages.items():
            old = self.record.stages.get(name)
            state = StageState(name=name, key=planned.key, inputs=planned.inputs,
                               shards=planned.shards)
            if old is not None and old.key == planned.key:
                state = old.model_copy(update={"inputs": planned.inputs})
            ran_here = state.status in ("running", "succeeded", "failed", "cancelled") or state.attempts
            if planned.decision == "cached":
                # committed by an attempt of this run before the controller stopped: succeeded
                state.status = "succeeded" if ran_here else "cached"
                for attempt in state.attempts:
                    if attempt.status == "running":  # it committed, then its controller died
                        attempt.status, attempt.ended_at = "succeeded", attempt.ended_at or utc_now()
                state.metrics = state.metrics or self._metrics(planned)
            elif planned.decision in ("supplied", "skipped"):
                state.status = planned.decision
            else:
                state.status = "pending"
            self.record.stages[name] = state
        for name in list(self.record.stages):
            if name not in plan.stages:
                del self.record.stages[name]

    def _metrics(self, planned: PlannedStage) -> dict[str, Any]:
        """Metrics from the committed manifest(s): shards' counts add up, rates average."""
        keys = [planned.key] if planned.shards <= 1 else [
            part_key(planned.key, i, planned.shards) for i in range(planned.shards)]
        per_shard = []
        for key in keys:
            manifest = self.store.manifest(key)
            if manifest is not None:
                per_shard.append(manifest.metadata.get("metrics", {}))
        if len(per_shard) <= 1:
            return per_shard[0] if per_shard else {}
        merged: dict[str, Any] = {}
        for name in per_shard[0]:
            values = [m.get(name) for m in per_shard]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                merged[name] = sum(values)
            elif all(isinstance(v, (int, float)) for v in values):
                merged[name] = sum(values) / len(values)
        return merged

    # -- running
    def execute(self) -> int:
        """Run every pending stage; the exit code says how the run ended. Outages are waited
        out (see the module docstring); any other error is recorded, then propagates."""
        with run_lock(self.run_dir), self._run_lease(), self._signals():
            self.record.controller = controller_identity()
            self.record.status = "running"
            self.record.error = None
            self.record.waiting = None
            outage = OutageClock(self.config.run.outage_backoff_max_s, self.config.run.outage_patience_s)
            while True:
                self._kill_leftovers()
                try:
                    return self._execute_plan()
                except Detached:
                    return self._detach()
                except Exception as e:
                    what = self._unreachable(e)
                    if what is None:
                        self._record_crash(e)
                        raise
                    pause = outage.failed(what, self._last_answer(e))
                    if pause is None:
                        return self._give_up(outage, e)
                    self.record.waiting = f"{outage.what} since {outage.since}: {e}"
                    log.warning("%s; retrying in %.0fs (giving up after %s of it)",
                                self.record.waiting, pause, _minutes(outage.patience_s))
                    self._save(best_effort=True)
                    if self._sleep(pause):
                        self.record.waiting = None
                        return self._stopped()
                    outage.resumed()

    def _execute_plan(self) -> int:
        """Plan (finished stages are found in the store), fold the plan into the record, run
        the rest. Called again after an outage: what finished meanwhile is found then."""
        try:
            plan = self.plan()
        except UserError as e:
            return self._finish("failed", EXIT_USER_ERROR, str(e))
        self._merge_plan(plan)
        self.record.waiting = None
        self._save()
        self.runs.add_to_index(self.record)
        for planned in plan.to_run():
            if self.interrupted:
                break
            code = self._run_reserved(planned, plan)
            if code != EXIT_OK:
                return code
        if self.interrupted:
            return self._stopped()
        self.record.status = "succeeded"
        self.record.ended_at = utc_now()
        self._write_report()
        return self._finish("succeeded", EXIT_OK, self.record.error)

    @contextmanager
    def _run_lease(self) -> Iterator[None]:
        """The run's lease for the block: a second controller on a live run (another pod on the
        same bucket) gets RunBusy naming the holder; losing the lease stops this one."""
        run = self.config.run
        lease = Lease(self.store, run_lease_key(self.record.run_id),
                      f"controller of run {self.record.run_id}", run.lease_ttl_s)
        try:
            lease.acquire()
        except LeaseHeld as e:
            raise RunBusy(f"run {self.record.run_id} is running in another controller: "
                          f"{e.holder.describe()}; `xwin cancel {self.record.run_id}` stops it, "
                          f"or it may be taken over once its lease lapses "
                          f"(run.lease_ttl_s = {run.lease_ttl_s:g} s after its last renewal)"
                          ) from None
        self.lease, self.lease_lost = lease, None
        try:
            with kept(lease, run.lease_renew_s, self._on_lease_lost):
                yield
        finally:
            self.lease = None
        if self.lease_lost:  # replaces the exit code the block returned
            raise RunBusy(f"run {self.record.run_id}: this controller lost its lease "
                          f"({self.lease_lost}) and stopped without writing the run record")

    def _on_lease_lost(self, reason: str) -> None:
        """From the heartbeat thread: stop the stage, write nothing more."""
        if self.lease_lost is None:
            self.lease_lost = reason
            self.interrupted = True
            if self.config.executor.kind == "local":  # our own processes: stop them
                self.executor.cancel(self.record.run_id)
            # a cluster Job is left running: the controller that took over adopts it

    def _run_reserved(self, planned: PlannedStage, plan: Plan) -> int:
        """_run_stage with the stage's content key reserved in the store for this run: a run
        whose plan needs the same key meanwhile waits, then finds it committed (cached)."""
        state = self.record.stages[planned.name]
        run = self.config.run
        lease = Lease(self.store, key_lease_key(planned.key),
                      f"run {self.record.run_id}, stage {planned.name}", run.lease_ttl_s)

        def waiting(holder: Holder) -> None:
            note = f"waiting for {planned.key} ({holder.owner})"
            if state.waiting_for != note:
                log.info("%s: %s", planned.name, note)
                state.waiting_for = note
                self._save()

        if not wait_for_key(lease, on_wait=waiting, max_backoff_s=run.key_wait_max_s,
                            pause=self._sleep):
            state.status, state.waiting_for = "cancelled", None
            return self._stopped(f"{planned.name}: cancelled while waiting for {planned.key}; "
                                 "resumable")
        with kept(lease, run.lease_renew_s, self._on_lease_lost):
            state.waiting_for = None
            # another run may have committed it since the plan (forced stages rerun regardless)
            if planned.name not in forced_stages(plan, self.force) and is_committed(
                    self.store, planned.key, planned.shards):
                log.info("%s: %s was committed by another run; reusing it", planned.name,
                         planned.key)
                state.status, state.metrics = "cached", self._metrics(planned)
                self._save()
                return EXIT_OK
            return self._run_stage(planned)

    def _finish(self, status, code: int, error: str | None = None, best_effort: bool = False) -> int:
        self.record.status = status
        self.record.ended_at = utc_now()
        self.record.error = error
        self._save(best_effort=best_effort)
        return code

    def _stopped(self, note: str = "interrupted; resumable") -> int:
        """A signal stopped the run outside a stage's follow (between stages, in a pause)."""
        if self.detaching:
            return self._detach()
        return self._finish("interrupted", EXIT_INTERRUPTED, note)

    def _detach(self) -> int:
        """Stop watching; the running stage's Job (and its attempt) stay running for the next
        controller to adopt."""
        run_id = self.record.run_id
        for state in self.record.stages.values():
            if state.status == "running":
                state.status = "detached"
        self.record.waiting = None
        return self._finish("detached", EXIT_DETACHED,
                            f"detached: the stage Jobs are still running; `xwin resume {run_id}` "
                            f"adopts them, `xwin cancel {run_id}` deletes them", best_effort=True)

    def _last_answer(self, error: Exception) -> float | None:
        """When the backend that `error` came from last answered (time.monotonic)."""
        return self._store_answered if isinstance(error, StoreUnavailable) else self.executor.last_answer

    def _unreachable(self, error: Exception) -> str | None:
        """What is out if `error` is an outage of the store or the executor's backend."""
        if isinstance(error, StoreUnavailable):
            return "S3 unreachable" if self.config.store.kind == "s3" else "store unreachable"
        return self.executor.unreachable(error)

    def _give_up(self, outage: OutageClock, error: Exception) -> int:
        self.record.waiting = None
        for state in self.record.stages.values():
            if state.status == "running" and not self.executor.stages_outlive_controller:
                state.status = "cancelled"
        message = (f"{outage.what} for {_minutes(outage.elapsed_s)} (since {outage.since}): "
                   f"{error}; `xwin resume {self.record.run_id}` continues")
        log.error("giving up: %s", message)
        return self._finish("failed", EXIT_FAILED, message, best_effort=True)

    def _record_crash(self, error: Exception) -> None:
        """An unexpected error: say so in the record before it propagates, so that no record
        stays "running" with no controller behind it."""
        self.record.waiting = None
        message = f"controller error: {type(error).__name__}: {error}; `xwin resume {self.record.run_id}` continues"
        for state in self.record.stages.values():
            if state.status == "running":
                state.status, state.error = "failed", message
        try:
            self._finish("failed", EXIT_FAILED, message, best_effort=True)
        except Exception:  # the error that matters is the one propagating
            log.exception("could not record the controller error")

    def _run_stage(self, planned: PlannedStage) -> int:
        """Attempts until one succeeds, a permanent error, the retry budget or an interrupt."""
        state = self.record.stages[planned.name]
        profile = self.profiles[planned.name]
        state.status = "running"
        state.started_at = state.started_at or utc_now()
        state.error = None
        backoff = self.config.run.retry_backoff_s
        tries_left = self.config.run.max_attempts
        # An attempt left running by a controller that died: a cluster Job may still be going.
        last = state.attempts[-1] if state.attempts else None
        if last is not None and last.status == "running":
            with self._following_stage():
                result = self.executor.adopt(self._job(planned, profile, last.number))
            if result is not None:
                tries_left -= 1
                code = self._settle(planned, state, last, result, tries_left)
                if code is not None:
                    return code
            else:
                last.status, last.reason = "cancelled", "controller stopped"
                last.ended_at = last.ended_at or utc_now()
        while True:
            tries_left -= 1
            attempt = Attempt(number=len(state.attempts) + 1, started_at=utc_now())
            attempt.log = str(self.run_dir / "logs" / f"{planned.name}.{attempt.number}.log")
            state.attempts.append(attempt)
            self._save()
            with self._following_stage():
                result = self.executor.run(self._job(planned, profile, attempt.number))
            code = self._settle(planned, state, attempt, result, tries_left)
            if code is not None:
                return code
            if self._cancelled_elsewhere():
                state.status = "cancelled"
                return self._finish("cancelled", EXIT_INTERRUPTED, "cancelled by `xwin cancel`")
            log.warning("%s attempt %d failed (%s); retrying in %.0fs", planned.name,
                        attempt.number, result.reason, backoff)
            if self._sleep(backoff):
                state.status = "pending" if self.detaching else "cancelled"
                return self._stopped(f"{planned.name}: cancelled; resumable")
            backoff *= 2

    def _settle(self, planned: PlannedStage, state: StageState, attempt: Attempt,
                result: StageResult, tries_left: int) -> int | None:
        """Record how an attempt ended; an exit code if the stage is done with, None to retry."""
        result = self._check_committed(planned, result)
        attempt.ended_at = utc_now()
        attempt.exit_code = result.exit_code
        attempt.status = result.status
        attempt.reason = result.reason
        attempt.preemptions = result.preemptions
        if result.log_path:
            attempt.log = str(result.log_path)
        if result.status == "succeeded":
            state.status = "succeeded"
            state.ended_at = utc_now()
            state.metrics = self._metrics(planned)
            self._save_timing(planned, state)
            self._save()
            return EXIT_OK
        if result.status == "cancelled" or self.interrupted:
            state.status = "cancelled"
            state.error = "cancelled"
            return self._finish("interrupted", EXIT_INTERRUPTED, f"{planned.name}: cancelled; resumable")
        if result.permanent or tries_left <= 0:
            state.status = "failed"
            state.ended_at = utc_now()
            state.error = self._failure_message(result)
            kind = "permanent error" if result.permanent else f"failed {len(state.attempts)} time(s)"
            code = EXIT_USER_ERROR if result.permanent else EXIT_FAILED
            return self._finish("failed", code, f"{planned.name}: {kind}: {result.reason}")
        self._save()
        return None

    def _cancelled_elsewhere(self) -> bool:
        """`xwin cancel` from another machine marks the run cancelled in the store, then
        deletes its Jobs: a deleted Job is then the end of the run, not a reason to retry."""
        if not self.executor.stages_outlive_controller:
            return False
        stored = self.runs.find(self.record.run_id)
        return stored is not None and stored.status == "cancelled"

    def _job(self, planned: PlannedStage, profile: JobProfile, attempt: int) -> StageJob:
        return stage_job(self.config, planned, self.record.run_id, profile, self.run_dir / "logs",
                         attempt)

    def _check_committed(self, planned: PlannedStage, result: StageResult) -> StageResult:
        """A stage that exits 0 without committing its output has not finished."""
        if result.status == "succeeded" and not is_committed(self.store, planned.key, planned.shards):
            return result.model_copy(update={
                "status": "failed", "permanent": True,
                "reason": f"exited 0 but committed no artifact at {planned.key}"})
        return result

    def _failure_message(self, result: StageResult) -> str:
        from xwin.executors.local import last_error

        message = result.reason or "failed"
        if result.log_path:
            _, tail = last_error(Path(result.log_path), lines=15)
            message += f"\n--- last lines of {result.log_path} ---\n{tail}"
        return message

    def _save_timing(self, planned: PlannedStage, state: StageState) -> None:
        if not self._may_write():
            return
        timing = {"run_id": self.record.run_id, "elapsed_s": state.elapsed_s,
                  "attempts": len(state.attempts), "finished_at": state.ended_at}
        self.store.put_record(timing_record_key(planned.key), json.dumps(timing).encode())

    def _sleep(self, seconds: float) -> bool:
        """Backoff that a Ctrl-C cuts short; True if interrupted."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.interrupted:
                return True
            time.sleep(0.1)
        return self.interrupted

    def _kill_leftovers(self) -> None:
        """Stage processes of a controller that was killed (local executor only)."""
        if self.config.executor.kind != "local":
            return
        from xwin.executors.local import kill_leftovers

        pids = [pid for s in self.record.stages.values() for a in s.attempts
                if a.status == "running" for pid in a.pids]
        kill_leftovers(pids)
        for s in self.record.stages.values():
            for a in s.attempts:
                if a.status == "running":  # the controller died while this attempt ran
                    a.status = "cancelled"
                    a.ended_at = a.ended_at or utc_now()
                    a.reason = "controller stopped"

    @contextmanager
    def _following_stage(self) -> Iterator[None]:
        """While the executor follows a stage, a detaching signal ends the follow at once."""
        if self.detaching:
            raise Detached("detach requested")
        self._following = True
        try:
            yield
        finally:
            self._following = False

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM leave the run resumable: under the local executor they stop the
        stage's processes; where stages outlive the controller (Kubernetes Jobs) they detach,
        and the Jobs run on for the next controller to adopt."""
        def handler(signum, frame):
            first = not self.interrupted
            self.interrupted = True
            run_id = self.record.run_id
            if not self.executor.stages_outlive_controller:
                if first:
                    log.warning("%s: stopping the running stage; `xwin resume %s` continues",
                                signal.Signals(signum).name, run_id)
                self.executor.cancel(run_id)
                return
            if first:
                log.warning("%s: detaching; the stage Jobs keep running: `xwin resume %s` adopts "
                            "them, `xwin cancel %s` deletes them", signal.Signals(signum).name,
                            run_id, run_id)
            self.detaching = True
            if self._following:
                self._following = False
                raise Detached(signal.Signals(signum).name)

        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may handle signals; its caller stops us via cancel()
            return
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _write_report(self) -> None:
        from xwin.controller.report import write_report

        try:
            self.record.report = str(write_report(self.record, self.store, self.runs))
        except Exception as e:  # a report problem must not fail a finished pipeline
            log.exception("report failed")
            self.record.error = f"report failed: {e}"


class OutageClock:
    """One outage's clock: capped exponential pauses (1 s, 2 s, 4 s ... up to `backoff_max_s`)
    until `patience_s` has passed since it began. Once the backend that failed has answered
    again after a pause, the outage is over: its next failure (a day later, in the same long
    stage) starts a new one."""

    def __init__(self, backoff_max_s: float, patience_s: float):
        self.backoff_max_s = backoff_max_s
        self.patience_s = patience_s
        self.what = ""
        self.since = ""  # when it began, for the record
        self._began: float | None = None
        self._pause = 1.0
        self._resumed_at: float | None = None

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self._began is None else time.monotonic() - self._began

    def failed(self, what: str, answered_at: float | None = None) -> float | None:
        """A failure of `what`, whose backend last answered at `answered_at` (monotonic; None:
        unknown): the pause before the next try, or None once patience is spent."""
        now = time.monotonic()
        recovered = (answered_at is not None and self._resumed_at is not None
                     and answered_at >= self._resumed_at)
        if self._began is None or recovered or what != self.what:
            self._began, self.since, self.what, self._pause = now, utc_now(), what, 1.0
        left = self.patience_s - (now - self._began)
        if left <= 0:
            return None
        pause = min(self._pause, self.backoff_max_s, left)
        self._pause = min(self._pause * 2, self.backoff_max_s)
        return pause

    def resumed(self) -> None:
        self._resumed_at = time.monotonic()


def _minutes(seconds: float) -> str:
    """10m, 90s: how long an outage lasted, for a person."""
    return f"{seconds / 60:.0f}m" if seconds >= 120 else f"{seconds:.0f}s"
