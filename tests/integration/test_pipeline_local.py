"""The controller with the local executor, on real stages and a tiny model, through the `xwin`
command: retries of transient failures, fast failure on bad input, sharded stages as several
processes, caching across runs, and the commands that inspect a run."""

from __future__ import annotations

import os
import signal

from pipeline_helpers import (
    alive,
    explain,
    only_record,
    records,
    running_stage_pids,
    start_xwin,
    tiny_config,
    wait_for,
    xwin,
)

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.artifacts.stage_io import part_key


def test_bad_data_fails_fast_with_the_stage_error_and_no_retry(tmp_path, tiny_model_dir):
    missing = tmp_path / "no-such-sharegpt.json"
    config = tiny_config(tmp_path, tiny_model_dir, run={"max_attempts": 3},
                         prepare={"sharegpt": str(missing)})
    result = xwin("run", str(config), "--only", "prepare", cwd=tmp_path)
    assert result.returncode == 2, explain(result)
    record = only_record(tmp_path / "work")
    prepare = record.stages["prepare"]
    assert record.status == "failed"
    assert prepare.status == "failed"
    assert len(prepare.attempts) == 1  # permanent: not retried although max_attempts is 3
    assert prepare.attempts[0].exit_code == 2
    assert f"{missing}: no such file" in prepare.attempts[0].reason
    assert f"{missing}: no such file" in result.stdout  # surfaced to the user


def test_a_killed_stage_is_retried_and_succeeds(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, run={"max_attempts": 2})
    proc = start_xwin("run", str(config), "--only", "prepare", cwd=tmp_path, log=tmp_path / "out.log")
    try:
        pids = wait_for(lambda: running_stage_pids(tmp_path / "work", "prepare"), 120,
                        "prepare running", proc)
        os.killpg(pids[0], signal.SIGKILL)  # what the OOM killer does
        assert proc.wait(timeout=300) == 0, (tmp_path / "out.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    prepare = only_record(tmp_path / "work").stages["prepare"]
    assert [a.status for a in prepare.attempts] == ["failed", "succeeded"]
    assert prepare.attempts[0].exit_code == -signal.SIGKILL
    assert "killed by SIGKILL" in prepare.attempts[0].reason
    assert prepare.status == "succeeded"
    assert prepare.metrics["sft_conversations"] == 12


def test_sharded_stage_runs_as_processes_and_everything_is_cached_the_second_time(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir,
                         run={"artifacts": {"sft": str(tiny_model_dir)}},
                         executor={"profiles": {"sample": {"shards": 2}},
                                   "local_parallel_shards": True})
    first = xwin("run", str(config), "--only", "prepare,sample", cwd=tmp_path)
    assert first.returncode == 0, explain(first)
    record = only_record(tmp_path / "work")
    assert [(n, s.status) for n, s in record.stages.items()] == [
        ("prepare", "succeeded"), ("sft", "supplied"), ("sample", "succeeded")]
    sample = record.stages["sample"]
    store = open_store(StoreConfig(root=tmp_path / "store"))
    for i in range(2):  # one process per shard, each committed its part
        manifest = store.manifest(part_key(sample.key, i, 2))
        assert manifest is not None and manifest.metadata["metrics"]["prompts"] == 2
    logs = sorted(p.name for p in (tmp_path / "work" / "runs" / record.run_id / "logs").iterdir())
    assert logs == ["prepare.1.log", "sample.1.log", "sample.1.shard-1.log"]
    assert "--shard 1/2" in (tmp_path / "work" / "runs" / record.run_id / "logs" /
                             "sample.1.shard-1.log").read_text()
    assert sample.metrics["prompts"] == 4  # shards' counts add up
    assert (tmp_path / "work" / "runs" / record.run_id / "report" / "report.md").exists()

    created = {k: store.manifest(k).created_at for k in store.list()}
    second = xwin("run", str(config), "--only", "prepare,sample", cwd=tmp_path)
    assert second.returncode == 0, explain(second)
    again = records(tmp_path / "work")[-1]
    assert again.run_id != record.run_id
    assert {n: s.status for n, s in again.stages.items()} == {
        "prepare": "cached", "sft": "supplied", "sample": "cached"}
    assert all(not s.attempts for s in again.stages.values())
    assert {k: store.manifest(k).created_at for k in store.list() if not k.startswith("reports/")} \
        == {k: v for k, v in created.items() if not k.startswith("reports/")}

    status = xwin("status", record.run_id, "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert status.returncode == 0 and "succeeded" in status.stdout, explain(status)
    listing = xwin("runs", "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert record.run_id in listing.stdout and again.run_id in listing.stdout, explain(listing)


def test_a_stage_needed_but_not_selected_is_a_clear_error(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir)
    result = xwin("run", str(config), "--only", "sample", cwd=tmp_path)
    assert result.returncode == 2
    assert "needed but not in the store" in result.stderr
    assert "prepare (needed by sample)" in result.stderr


def test_cancel_stops_the_controller_and_its_stage_and_the_run_stays_resumable(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir)
    controller = start_xwin("run", str(config), "--only", "prepare", cwd=tmp_path, log=tmp_path / "out.log")
    try:
        pids = wait_for(lambda: running_stage_pids(tmp_path / "work", "prepare"), 120,
                        "prepare running", controller)
        run_id = records(tmp_path / "work")[-1].run_id
        cancelled = xwin("cancel", run_id, "--workdir", str(tmp_path / "work"), cwd=tmp_path)
        assert cancelled.returncode == 0, explain(cancelled)
        assert "stopped" in cancelled.stdout
        assert controller.wait(timeout=60) == 130
    finally:
        if controller.poll() is None:
            controller.kill()
    assert not any(alive(p) for p in pids)
    record = only_record(tmp_path / "work")
    assert record.status == "interrupted"
    assert record.stages["prepare"].status == "cancelled"


def test_a_stage_past_its_deadline_is_stopped_retried_and_the_run_fails_with_exit_1(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, run={"max_attempts": 2},
                         executor={"profiles": {"prepare": {"active_deadline_s": 1}}})
    result = xwin("run", str(config), "--only", "prepare", cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    prepare = only_record(tmp_path / "work").stages["prepare"]
    assert [a.reason for a in prepare.attempts] == ["ran past active_deadline_s=1"] * 2
    assert prepare.status == "failed"
    assert not any(alive(p) for a in prepare.attempts for p in a.pids)
