"""One writer per run and per key, with controllers that share only the store (the local store,
and moto's S3 over HTTP): as two controller pods on a cluster would. Each controller gets its
own workdir, so the local flock (which fences only one machine) plays no part.

The stage processes are replaced by CountingExecutor, a real Executor that "runs" a stage by
committing a small artifact at its output key and counts every run, so a test can hold a stage
running and count how many times a key was produced."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from xwin.artifacts.s3 import S3Store
from xwin.config import load_config
from xwin.controller import api
from xwin.controller.lease import Holder, Lease, RunBusy, kept, key_lease_key, run_lease_key
from xwin.controller.pipeline import Controller, new_record
from xwin.controller.progress import stage_note
from xwin.controller.state import LEGACY_INDEX_KEY, RunRecord, RunStore
from xwin.core.errors import EXIT_BUSY, EXIT_OK, UserError
from xwin.executors.base import Executor, StageJob, StageResult

REPO = Path(__file__).resolve().parents[2]
TTL_S = 1.0  # short leases, so expiry and takeover happen within a test


class CountingExecutor(Executor):
    def __init__(self, store, tmp_path: Path, *, hold: bool = False):
        self.store = store
        self.tmp_path = tmp_path
        self.runs: list[tuple[str, str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.cancelled = threading.Event()
        if not hold:
            self.release.set()

    def run(self, job: StageJob) -> StageResult:
        self.runs.append((job.run_id, job.stage))
        self.started.set()
        while not self.release.wait(0.02):
            if self.cancelled.is_set():
                return StageResult(status="cancelled", reason="cancelled")
        out = self.tmp_path / f"out-{job.run_id}-{job.stage}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "data.txt").write_text(f"made by {job.run_id}")
        self.store.commit(job.spec.output, out, producer=job.stage)
        return StageResult(status="succeeded", exit_code=0)

    def cancel(self, run_id: str) -> None:
        self.cancelled.set()


@pytest.fixture(params=["local", "s3"])
def new_store(request, tmp_path):
    """Opens a store client on the one shared store: each controller gets its own, as each pod
    would."""
    if request.param == "local":
        from xwin.artifacts.config import StoreConfig
        from xwin.artifacts.local import LocalStore

        config = StoreConfig(kind="local", root=tmp_path / "store")
        return lambda: (LocalStore(config), config)
    request.getfixturevalue("moto_atomic_puts")
    config = request.getfixturevalue("s3_store_config")
    return lambda: (S3Store(config, backoff_s=0.01), config)


def pod(tmp_path: Path, name: str, new_store):
    """A controller's config, store and runs in its own workdir, sharing the store."""
    store, store_config = new_store()
    config = load_config(None, [
        f"run.workdir={tmp_path / name}", "run.only=[prepare]", f"run.lease_ttl_s={TTL_S}",
        "run.lease_renew_s=0.2", "run.key_wait_max_s=0.2", "run.retry_backoff_s=0",
        f"executor.profiles_dir={REPO / 'jobs'}",
    ])
    config.store = store_config
    return config, store, RunStore(store, tmp_path / name)


def in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["code"] = fn()
        except Exception as e:  # noqa: BLE001 - the test asserts on it
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_until(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {condition}")


def take_over_the_run_lease(store, run_id: str, owner: str) -> str:
    """Another controller's conditional takeover of the run's lease, as a lapsed lease allows;
    the lease's key."""
    key = run_lease_key(run_id)
    found = store.get_record_versioned(key)
    taker = Holder.model_validate_json(found.data).model_copy(
        update={"owner": owner, "token": "b", "expires_at": time.time() + 60})
    store.replace_record(key, taker.model_dump_json().encode(), version=found.version)
    return key


def test_a_second_controller_on_a_live_run_exits_busy_naming_the_first(tmp_path, new_store,
                                                                        capsys):
    config_a, store_a, runs_a = pod(tmp_path, "pod-a", new_store)
    executor = CountingExecutor(store_a, tmp_path, hold=True)
    record = new_record(config_a, runs_a)
    first = Controller(config_a, record, store_a, runs_a, executor=executor)
    thread, result = in_thread(first.execute)
    assert executor.started.wait(20)
    time.sleep(0.5)  # a few renewals: the lease stays live past its first TTL

    config_b, _, runs_b = pod(tmp_path, "pod-b", new_store)
    capsys.readouterr()
    code = api._execute(config_b, runs_b.load(record.run_id), runs_b)
    said = " ".join(capsys.readouterr().out.split())
    assert code == EXIT_BUSY
    assert f"run {record.run_id} is running in another controller" in said
    assert f"controller of run {record.run_id}" in said and f"pid {os.getpid()}" in said

    executor.release.set()
    thread.join(20)
    assert result == {"code": EXIT_OK}
    assert executor.runs == [(record.run_id, "prepare")]
    holder = Holder.model_validate_json(store_a.get_record(run_lease_key(record.run_id)))
    assert holder.released  # the next controller need not wait


def test_after_a_dead_controllers_lease_lapses_a_new_one_takes_over(tmp_path, new_store):
    config, store, runs = pod(tmp_path, "pod-b", new_store)
    record = new_record(config, runs)
    runs.save(record)
    # pod A died holding the run: its lease is in the store, renewed by nobody
    Lease(store, run_lease_key(record.run_id), "controller of run (pod A)", TTL_S).acquire()
    executor = CountingExecutor(store, tmp_path)
    with pytest.raises(RunBusy, match=r"controller of run \(pod A\)"):
        Controller(config, runs.load(record.run_id), store, runs, executor=executor).execute()
    assert executor.runs == []
    time.sleep(TTL_S + 0.1)
    code = Controller(config, runs.load(record.run_id), store, runs, executor=executor).execute()
    assert code == EXIT_OK
    assert executor.runs == [(record.run_id, "prepare")]
    assert runs.load(record.run_id).status == "succeeded"


def test_a_controller_that_loses_its_lease_stops_its_stage_and_writes_nothing(tmp_path,
                                                                               new_store):
    config, store, runs = pod(tmp_path, "pod-a", new_store)
    executor = CountingExecutor(store, tmp_path, hold=True)
    record = new_record(config, runs)
    first = Controller(config, record, store, runs, executor=executor)
    thread, result = in_thread(first.execute)
    assert executor.started.wait(20)
    # pod B took the run over (pod A was cut off long enough for its lease to lapse)
    key = take_over_the_run_lease(store, record.run_id, "controller in pod B")
    record_at_takeover = store.get_record(f"runs/{record.run_id}")

    thread.join(20)
    assert executor.cancelled.is_set()  # its stage process was stopped
    error = result["error"]
    assert isinstance(error, RunBusy)
    assert "lost its lease" in str(error) and "taken over by controller in pod B" in str(error)
    assert store.get_record(f"runs/{record.run_id}") == record_at_takeover
    assert Holder.model_validate_json(store.get_record(key)).owner == "controller in pod B"


def test_on_a_cluster_a_controller_that_loses_its_lease_leaves_the_job_to_the_new_holder(
        tmp_path, new_store):
    """Kubernetes: the stage's Job belongs to the run, and the controller that took over adopts
    it, so the one that lost the lease does not cancel it; it only stops writing."""
    config, store, runs = pod(tmp_path, "pod-a", new_store)
    config.executor = config.executor.model_copy(update={"kind": "kubernetes"})
    executor = CountingExecutor(store, tmp_path, hold=True)
    record = new_record(config, runs)
    controller = Controller(config, record, store, runs, executor=executor)
    stage_key = controller.plan().stages["prepare"].key
    thread, result = in_thread(controller.execute)
    assert executor.started.wait(20)
    take_over_the_run_lease(store, record.run_id, "controller in pod B")
    record_at_takeover = store.get_record(f"runs/{record.run_id}")
    time.sleep(0.6)  # a few heartbeats: the loss is noticed
    assert thread.is_alive() and not executor.cancelled.is_set()
    executor.release.set()  # the Job finishes (and commits) on its own
    thread.join(20)
    assert isinstance(result["error"], RunBusy) and "lost its lease" in str(result["error"])
    assert store.get_record(f"runs/{record.run_id}") == record_at_takeover
    assert store.exists(stage_key)  # the Job's output stands, for the new holder to find
    assert store.get_record(f"timings/{stage_key}") is None  # nothing written by the loser


def test_run_ids_claimed_at_once_never_collide_and_all_are_indexed(tmp_path, new_store):
    _, store, runs = pod(tmp_path, "pod-a", new_store)
    store.put_record(LEGACY_INDEX_KEY, b'{"old-run": {"name": "old", "created_at": "2020"}}')
    barrier = threading.Barrier(8)
    claimed: list[str] = []

    def claim(n: int) -> None:
        own_runs = RunStore(new_store()[0], tmp_path / f"pod-{n}")  # a pod of its own
        barrier.wait()
        claimed.append(own_runs.claim_run_id("tiny", "2026-01-01T00:00:00+00:00"))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 8 and len(set(claimed)) == 8
    assert set(runs.index()) == {*claimed, "old-run"}  # the old index is still read
    assert runs.list_ids()[0] == "old-run"


def two_runs(tmp_path, new_store):
    config_a, store_a, runs_a = pod(tmp_path, "pod-a", new_store)
    config_b, store_b, runs_b = pod(tmp_path, "pod-b", new_store)
    executor = CountingExecutor(store_a, tmp_path, hold=True)
    record_a = new_record(config_a, runs_a)
    record_b = new_record(config_b, runs_b)
    first = Controller(config_a, record_a, store_a, runs_a, executor=executor)
    second = Controller(config_b, record_b, store_b, runs_b, executor=executor)
    return first, second, executor


def test_two_runs_needing_one_key_train_it_once_and_the_second_reuses_it(tmp_path, new_store,
                                                                         capsys):
    first, second, executor = two_runs(tmp_path, new_store)
    thread_a, result_a = in_thread(first.execute)
    assert executor.started.wait(20)
    thread_b, result_b = in_thread(second.execute)
    key = first.plan().stages["prepare"].key

    def waiting() -> RunRecord | None:
        try:
            record = second.runs.load(second.record.run_id)
        except UserError:  # not saved yet
            return None
        return record if record.stages["prepare"].waiting_for else None

    shown = stage_note(wait_until(waiting).stages["prepare"])
    assert shown == f"waiting for {key} (run {first.record.run_id}, stage prepare)"
    capsys.readouterr()
    assert api.show_status(second.record.run_id, second.runs.workdir, None) == 0
    status = " ".join(capsys.readouterr().out.split())
    assert f"prepare: {shown}" in status
    assert f"controller: controller of run {second.record.run_id}" in status
    executor.release.set()
    thread_a.join(20)
    thread_b.join(20)
    assert result_a == {"code": EXIT_OK} and result_b == {"code": EXIT_OK}
    assert executor.runs == [(first.record.run_id, "prepare")]  # trained once
    after = second.runs.load(second.record.run_id).stages["prepare"]
    assert (after.status, after.waiting_for, after.attempts) == ("cached", None, [])
    holder = Holder.model_validate_json(second.store.get_record(key_lease_key(key)))
    assert holder.released and holder.owner == f"run {second.record.run_id}, stage prepare"


def test_a_key_reservation_left_by_a_dead_run_is_taken_over(tmp_path, new_store):
    config, store, runs = pod(tmp_path, "pod-b", new_store)
    executor = CountingExecutor(store, tmp_path)
    controller = Controller(config, new_record(config, runs), store, runs, executor=executor)
    key = controller.plan().stages["prepare"].key
    Lease(store, key_lease_key(key), "run dead-1, stage prepare", TTL_S).acquire()
    started = time.monotonic()
    assert controller.execute() == EXIT_OK
    assert time.monotonic() - started >= TTL_S * 0.9  # it waited for the lease to lapse
    assert executor.runs == [(controller.record.run_id, "prepare")]
    assert store.exists(key)


def test_a_holder_cut_off_from_s3_stops_writing_then_renews_when_s3_answers(
        s3_fault_proxy, s3_store_config, moto_atomic_puts):
    """Unreachable is not refused: past its TTL the holder may not write (valid() is False),
    but it keeps renewing, and once S3 answers the renewal proves nobody took over."""
    config = s3_store_config.model_copy(update={"endpoint_url": s3_fault_proxy.endpoint_url,
                                                "max_attempts": 2})
    store = S3Store(config, backoff_s=0.01)
    mine = Lease(store, "leases/runs/r1", "controller A", ttl_s=0.6)
    mine.acquire()
    lost: list[str] = []
    outage = s3_fault_proxy.fail("PUT", ".records/leases/runs/r1", action="503", times=None)
    with kept(mine, interval_s=0.1, on_lost=lost.append):
        wait_until(lambda: not mine.valid(), timeout=10)
        time.sleep(0.3)
        assert lost == [] and outage.hits >= 4  # it kept trying
        s3_fault_proxy.clear()
        wait_until(mine.valid, timeout=10)
    assert lost == []
    assert Holder.model_validate_json(store.get_record("leases/runs/r1")).released


def test_a_holder_whose_lease_was_taken_during_an_outage_is_told_when_s3_answers(
        s3_fault_proxy, s3_store_config, moto_atomic_puts):
    config = s3_store_config.model_copy(update={"endpoint_url": s3_fault_proxy.endpoint_url,
                                                "max_attempts": 2})
    store = S3Store(config, backoff_s=0.01)
    direct = S3Store(s3_store_config, backoff_s=0.01)  # pod B reaches S3; pod A does not
    mine = Lease(store, "leases/runs/r1", "controller A", ttl_s=0.6)
    mine.acquire()
    lost: list[str] = []
    s3_fault_proxy.fail("PUT", ".records/leases/runs/r1", action="503", times=None)
    with kept(mine, interval_s=0.1, on_lost=lost.append):
        wait_until(lambda: not mine.valid(), timeout=10)
        Lease(direct, "leases/runs/r1", "controller B", ttl_s=60).acquire()
        s3_fault_proxy.clear()
        wait_until(lambda: lost, timeout=10)
    assert len(lost) == 1 and "taken over by controller B" in lost[0]
    assert Holder.model_validate_json(direct.get_record("leases/runs/r1")).owner == "controller B"
