"""Checkpoints per attempt: two writers of one output key keep their own checkpoints (neither
deletes the other's), a later attempt resumes from the newest complete checkpoint of any
attempt, and cleanup removes only what is the attempt's (and its run's ended attempts') own."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.local import LocalStore
from xwin.train.checkpoint import Checkpoints, TrainState, attempt_name, rng_file, save_rng_states
from xwin.train.launch import ProcessPlace

PLACE = ProcessPlace(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0, nnodes=1,
                     master_addr="127.0.0.1", master_port=29500)
KEY = "runs/shared/sft"


class StepEngine:
    """DeepSpeed's part of a checkpoint, reduced to one file naming the step it was saved at;
    what is under test is where our checkpoints go in the store, not DeepSpeed's files."""

    def __init__(self):
        self.checkpoint_engine = SimpleNamespace()
        self.loaded: str | None = None

    def save_checkpoint(self, root: str, tag: str) -> None:
        (Path(root) / tag).mkdir(parents=True, exist_ok=True)
        (Path(root) / tag / "weights.txt").write_text(tag)

    def load_checkpoint(self, root: str, tag: str, **_):
        self.loaded = (Path(root) / tag / "weights.txt").read_text()
        return str(Path(root) / tag), None


def writer(tmp_path: Path, store: LocalStore, run_id: str, attempt: int) -> Checkpoints:
    return Checkpoints(store, KEY, tmp_path / run_id / "checkpoints", PLACE, "sft-checkpoint",
                       attempt=attempt_name(run_id, attempt))


def save(checkpoints: Checkpoints, step: int) -> None:
    checkpoints.save(StepEngine(), TrainState(step=step, micro_batch=step * 2), [{"step": step}])


def committed_tags(store: LocalStore) -> list[str]:
    return [key.removeprefix(f"{KEY}.ckpt/") for key in store.list(f"{KEY}.ckpt/")]


def test_two_writers_of_one_key_never_delete_each_others_checkpoints(tmp_path):
    store = LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))
    a, b = writer(tmp_path, store, "run-a", 1), writer(tmp_path, store, "run-b", 1)
    save(a, 2)
    save(b, 3)
    save(a, 4)  # deletes a's step 2, not b's step 3
    assert committed_tags(store) == ["attempt-run-a-1/step-00000004/node-0",
                                     "attempt-run-b-1/step-00000003/node-0"]
    save(b, 5)
    assert committed_tags(store) == ["attempt-run-a-1/step-00000004/node-0",
                                     "attempt-run-b-1/step-00000005/node-0"]
    # each pointer names its own, still complete, checkpoint
    for checkpoints, tag in ((a, "step-00000004"), (b, "step-00000005")):
        pointer = json.loads(store.get_record(checkpoints.pointer_key))
        assert (pointer["tag"], pointer["attempt"]) == (tag, checkpoints.attempt)
        assert store.exists(f"{checkpoints.prefix}/{tag}/node-0")


def test_a_retried_attempt_resumes_from_the_previous_attempts_latest_and_clears_only_its_runs(tmp_path):
    store = LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))
    first = writer(tmp_path, store, "run-r", 1)
    save(first, 4)
    save(first, 8)  # then attempt 1 dies
    other_run = writer(tmp_path, store, "run-s", 1)
    save(other_run, 6)

    second = writer(tmp_path, store, "run-r", 2)
    engine = StepEngine()
    state, history = second.restore(engine)
    assert (state.step, state.micro_batch, history) == (8, 16, [{"step": 8}])
    assert engine.loaded == "step-00000008"
    save(second, 12)
    assert writer(tmp_path, store, "run-t", 1).latest()[1]["tag"] == "step-00000012"

    second.clear()  # the final model is committed
    # its own and its run's ended attempt 1 are gone; run-s's checkpoint is run-s's to delete
    assert committed_tags(store) == ["attempt-run-s-1/step-00000006/node-0"]
    assert json.loads(store.get_record(second.pointer_key)) == {"tag": None, "completed": True}


def test_resume_skips_an_incomplete_newest_checkpoint_and_crafted_pointers(tmp_path):
    store = LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))
    older, newer = writer(tmp_path, store, "run-a", 1), writer(tmp_path, store, "run-b", 1)
    save(older, 4)
    save(newer, 8)
    store.delete(f"{newer.prefix}/step-00000008/node-0")  # its part is gone, its pointer stays
    crafted = writer(tmp_path, store, "run-c", 1)
    save(crafted, 2)
    store.put_record(crafted.pointer_key, json.dumps(
        {"tag": "../../../etc", "step": 99, "nodes": 1, "world_size": 1, "rng": "xwin-rng/1"}).encode())

    prefix, pointer = writer(tmp_path, store, "run-d", 1).latest()
    assert (prefix, pointer["tag"]) == (older.prefix, "step-00000004")


def test_a_checkpoint_from_before_attempt_prefixes_is_still_resumed(tmp_path):
    store = LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))
    folder = tmp_path / "legacy" / "step-00000006"
    StepEngine().save_checkpoint(str(folder.parent), folder.name)
    save_rng_states(rng_file(folder, 0))
    (folder / "trainer_state.json").write_text(json.dumps({"step": 6, "epoch": 0, "micro_batch": 12, "tokens": 0}))
    (folder / "metrics.jsonl").write_text("")
    store.commit(f"{KEY}.ckpt/step-00000006/node-0", folder, producer="sft-checkpoint")
    store.put_record(f"{KEY}.ckpt/latest", json.dumps(
        {"tag": "step-00000006", "step": 6, "nodes": 1, "world_size": 1, "rng": "xwin-rng/1"}).encode())

    engine = StepEngine()
    resumed = writer(tmp_path, store, "run-new", 1)
    state, _ = resumed.restore(engine)
    assert (state.step, engine.loaded) == (6, "step-00000006")
    resumed.clear()  # no attempt owns the old layout: it goes with the finished run
    assert committed_tags(store) == []
