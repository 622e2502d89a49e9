"""Run records in the artifact store and their local mirror; what the local executor would
start for a stage's Job; how a failed stage's log is summarised."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.artifacts.stage_io import StageSpec
from xwin.controller.state import Attempt, RunRecord, RunStore, StageState
from xwin.core.errors import UserError
from xwin.executors.base import JobProfile, StageJob
from xwin.executors.local import job_processes, last_error


@pytest.fixture
def runs(tmp_path):
    return RunStore(open_store(StoreConfig(root=tmp_path / "store")), tmp_path / "work")


def a_record(run_id: str = "demo-1") -> RunRecord:
    return RunRecord(run_id=run_id, name="demo", created_at="2026-01-01T00:00:00+00:00",
                     updated_at="2026-01-01T00:00:00+00:00", config={"run": {}}, workdir="w",
                     stages={"sft": StageState(name="sft", key="sft/abc")})


def test_a_record_round_trips_through_the_store_and_the_local_mirror(runs, tmp_path):
    record = a_record()
    record.stages["sft"].attempts.append(Attempt(number=1, started_at="2026-01-01T00:00:00+00:00",
                                                 pids=[123]))
    runs.save(record)
    runs.add_to_index(record)
    assert runs.load("demo-1") == record
    assert (tmp_path / "work" / "runs" / "demo-1" / "state.json").exists()
    assert runs.store.get_record("runs/demo-1") is not None
    assert runs.list_ids() == ["demo-1"]
    assert runs.latest() == "demo-1"
    # the store's copy wins over a stale mirror
    (tmp_path / "work" / "runs" / "demo-1" / "state.json").write_text(a_record().model_dump_json())
    assert runs.load("demo-1").stages["sft"].attempts[0].pids == [123]


def test_unknown_or_malformed_run_ids_are_user_errors(runs):
    with pytest.raises(UserError, match="no run 'nope'"):
        runs.load("nope")
    with pytest.raises(UserError, match="not a run id"):
        runs.load("../etc")


def test_run_ids_never_collide(runs):
    taken = set()
    for _ in range(3):
        run_id = runs.claim_run_id("my demo/1", "2026-01-01T00:00:00+00:00")
        assert run_id.startswith("my-demo-1-")
        taken.add(run_id)
    assert len(taken) == 3


def test_stage_time_is_the_time_spent_in_attempts():
    stage = StageState(name="sft", key="k", attempts=[
        Attempt(number=1, started_at="2026-01-01T00:00:00+00:00", ended_at="2026-01-01T00:00:30+00:00",
                status="failed"),
        # the run sat stopped for an hour before `xwin resume`
        Attempt(number=2, started_at="2026-01-01T01:00:30+00:00", ended_at="2026-01-01T01:01:00+00:00",
                status="succeeded"),
    ])
    assert stage.elapsed_s == 60.0
    assert StageState(name="rm", key="k").elapsed_s is None


def job(tmp_path: Path, stage: str, profile: JobProfile, shards: int = 1) -> StageJob:
    spec = StageSpec(stage=stage, run_id="r1", output=f"{stage}/x", shards=shards)
    return StageJob(run_id="r1", stage=stage, attempt=3, spec=spec, profile=profile,
                    log_dir=tmp_path / "logs")


def test_a_two_node_gang_is_two_processes_with_ranks_and_one_local_rendezvous(tmp_path):
    procs = job_processes(job(tmp_path, "sft", JobProfile(kind="train", nodes=2)),
                          tmp_path / "spec.yaml")
    assert len(procs) == 2
    for rank, proc in enumerate(procs):
        assert proc.argv == [sys.executable, "-m", "xwin.cli", "stage", "sft", "--config",
                             str(tmp_path / "spec.yaml")]
        env = proc.env
        assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == (str(rank), "2", "0")
        assert env["JOB_COMPLETION_INDEX"] == str(rank)
        assert (env["XWIN_NNODES"], env["XWIN_NPROC_PER_NODE"]) == ("2", "1")
        assert env["MASTER_ADDR"] == "127.0.0.1"
        assert env.get("HOME") == os.environ.get("HOME")  # not the pod's filesystem
    assert procs[0].env["MASTER_PORT"] == procs[1].env["MASTER_PORT"] != "29500"
    assert [p.log_path.name for p in procs] == ["sft.3.log", "sft.3.rank-1.log"]
    assert procs[0].group == procs[1].group  # started together


def test_a_node_with_several_processes_leaves_ranks_to_the_stage_launcher(tmp_path):
    procs = job_processes(job(tmp_path, "sft", JobProfile(kind="train", nodes=2, nproc_per_node=2)),
                          tmp_path / "spec.yaml")
    assert len(procs) == 2  # one per pod; each starts its 2 workers (xwin.train.launch)
    assert all("RANK" not in p.env for p in procs)
    assert [p.env["XWIN_NPROC_PER_NODE"] for p in procs] == ["2", "2"]


@pytest.mark.parametrize("parallel", [True, False])
def test_shards_are_processes_with_their_index_and_finished_ones_are_skipped(tmp_path, parallel):
    profile = JobProfile(kind="sharded", shards=3)
    procs = job_processes(job(tmp_path, "sample", profile, shards=3), tmp_path / "spec.yaml",
                          done_shards={1}, parallel_shards=parallel)
    assert [p.argv[-2:] for p in procs] == [["--shard", "0/3"], ["--shard", "2/3"]]
    assert [p.env["JOB_COMPLETION_INDEX"] for p in procs] == ["0", "2"]
    assert [p.log_path.name for p in procs] == ["sample.3.log", "sample.3.shard-2.log"]
    groups = [p.group for p in procs]
    assert (groups[0] == groups[1]) is parallel


def test_the_reason_of_a_failure_is_the_stage_error_line_else_the_last_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("starting\nprogress 10%\rprogress 50%\nerror: pairs.jsonl:3: chosen: empty\n"
                   "Traceback ignored\n")
    reason, tail = last_error(log)
    assert reason == "pairs.jsonl:3: chosen: empty"
    assert tail.splitlines()[1] == "progress 50%"  # a redrawn bar keeps its last state
    log.write_text("RuntimeError: boom\n")
    assert last_error(log)[0] == "RuntimeError: boom"
    assert last_error(tmp_path / "missing.log") == (None, "")


def test_a_stage_waiting_in_kueue_shows_its_queue_state_then_its_log(tmp_path):
    from xwin.controller.progress import stage_note

    log = tmp_path / "sft.1.log"
    log.write_text("step 10 loss 1.2\n")
    stage = StageState(name="sft", key="sft/abc", status="running", attempts=[
        Attempt(number=1, started_at="2026-01-01T00:00:00+00:00", log=str(log),
                queue="pending quota (Kueue)")])
    assert stage_note(stage) == "pending quota (Kueue)"
    stage.attempts[0].queue = "admitted by Kueue"
    assert stage_note(stage) == "step 10 loss 1.2"
    # A record from before Kueue support still loads: no queue state, no preemptions.
    old = Attempt.model_validate({"number": 1, "started_at": "2026-01-01T00:00:00+00:00"})
    assert (old.queue, old.preemptions) == (None, 0)


def test_the_index_reads_per_run_entries_and_the_old_single_record(runs, caplog):
    runs.store.put_record("runs/index", b'{"old-1": {"name": "old", "created_at": "2025-01-01"}}')
    first = runs.claim_run_id("demo", "2026-01-01T00:00:00+00:00")
    second = runs.claim_run_id("demo", "2026-01-01T00:00:00+00:00")
    assert second != first  # within the same second: `<first>-2`, its claim of `first` refused
    runs.store.put_record("runs-index/broken-1", b"{not json")
    assert runs.index() == {
        "old-1": {"name": "old", "created_at": "2025-01-01"},
        first: {"name": "demo", "created_at": "2026-01-01T00:00:00+00:00"},
        second: {"name": "demo", "created_at": "2026-01-01T00:00:00+00:00"},
    }
    assert "damaged run index entry runs-index/broken-1" in caplog.text
    assert runs.list_ids() == ["old-1", first, second]
    # an id claimed by a run that died before its first record is skipped, not an error
    runs.save(a_record(first))
    assert runs.latest() == first
