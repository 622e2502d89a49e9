"""A run survives its controller: Ctrl-C stops the running stage's processes and leaves the run
resumable; after `kill -9` of the controller mid-stage, `xwin resume` finishes the run without
rerunning finished stages, and the interrupted stage picks up its own chunks."""

from __future__ import annotations

import signal
import time

from pipeline_helpers import (
    alive,
    explain,
    only_record,
    running_stage_pids,
    start_xwin,
    tiny_config,
    wait_for,
    xwin,
)

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.data.io import read_complete_records
from xwin.stages.sample import PARTIAL_FILE


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    wait_for(lambda: not any(alive(p) for p in pids), timeout, f"processes {pids} to exit")


def test_interrupt_then_kill_9_mid_stage_then_resume_to_completion(tmp_path, tiny_model_dir):
    # sample: 16 prompts in chunks of one, so the kill lands between chunks
    config = tiny_config(tmp_path, tiny_model_dir,
                         run={"artifacts": {"sft": str(tiny_model_dir)}},
                         prepare={"prompts": 16},
                         sample={"max_new_tokens": 24, "chunk_prompts": 1})
    workdir = tmp_path / "work"
    store = open_store(StoreConfig(root=tmp_path / "store"))

    # 1. Ctrl-C while prepare runs: its process group is stopped, the run is resumable.
    controller = start_xwin("run", str(config), "--only", "prepare,sample", cwd=tmp_path,
                            log=tmp_path / "run.log")
    pids = wait_for(lambda: running_stage_pids(workdir, "prepare"), 120, "prepare running", controller)
    controller.send_signal(signal.SIGINT)
    assert controller.wait(timeout=60) == 130, (tmp_path / "run.log").read_text()
    wait_gone(pids, timeout=5)  # stopped by the controller before it exited
    record = only_record(workdir)
    assert record.status == "interrupted"
    assert record.stages["prepare"].status == "cancelled"
    assert record.stages["prepare"].attempts[-1].status == "cancelled"
    assert record.stages["sample"].status == "pending"
    run_id = record.run_id

    # 2. Resume, and kill -9 the controller once sample has finished a chunk.
    controller = start_xwin("resume", run_id, "--workdir", str(workdir), cwd=tmp_path,
                            log=tmp_path / "resume1.log")
    sample_pids = wait_for(lambda: running_stage_pids(workdir, "sample"), 300, "sample running",
                           controller)
    partial = workdir / "work" / run_id / "sample" / PARTIAL_FILE
    wait_for(lambda: any(True for _ in read_complete_records(partial, "multiwise")), 300,
             "a finished sample chunk", controller)
    controller.kill()
    controller.wait(timeout=30)
    wait_gone(sample_pids)  # the stage dies with its controller (PR_SET_PDEATHSIG)
    chunks_done = sum(1 for _ in read_complete_records(partial, "multiwise"))
    record = only_record(workdir)
    prepare = record.stages["prepare"]
    assert prepare.status == "succeeded"
    assert [a.status for a in prepare.attempts] == ["cancelled", "succeeded"]
    assert record.stages["sample"].status == "running"  # the controller never got to say
    assert not store.exists(record.stages["sample"].key)
    prepare_manifest = store.manifest(prepare.key)

    status = xwin("status", run_id, "--workdir", str(workdir), cwd=tmp_path)
    assert "interrupted" in status.stdout, explain(status)  # a dead controller is noticed

    # 3. Resume to completion: prepare is not run again, sample continues from its chunks.
    time.sleep(1)  # a rerun would show in created_at (second resolution)
    result = xwin("resume", "latest", "--workdir", str(workdir), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    record = only_record(workdir)
    assert record.status == "succeeded"
    prepare = record.stages["prepare"]
    assert len(prepare.attempts) == 2
    assert store.manifest(prepare.key).created_at == prepare_manifest.created_at
    assert store.manifest(prepare.key).commit_id == prepare_manifest.commit_id
    sample = record.stages["sample"]
    assert [a.status for a in sample.attempts] == ["cancelled", "succeeded"]
    assert sample.attempts[0].reason == "controller stopped"
    assert sample.metrics["prompts"] == 16
    assert sample.metrics["prompts_resumed"] >= chunks_done >= 1
    assert sample.metrics["prompts_generated"] == 16 - sample.metrics["prompts_resumed"]
    logs = workdir / "runs" / run_id / "logs"
    assert (logs / "sample.1.log").exists() and (logs / "sample.2.log").exists()
