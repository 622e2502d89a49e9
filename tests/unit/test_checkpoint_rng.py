"""Checkpoints hold nothing that is unpickled: RNG states are JSON and restore exactly; an RNG
file holding a pickle is refused without running it, and a checkpoint from before (RNG states
pickled in rng_state_rank<R>.pt) starts the stage afresh instead of being loaded."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.local import LocalStore
from xwin.core.errors import UserError
from xwin.train.checkpoint import RNG_FORMAT, Checkpoints, load_rng_states, rng_file, save_rng_states
from xwin.train.launch import ProcessPlace

PLACE = ProcessPlace(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0, nnodes=1,
                     master_addr="127.0.0.1", master_port=29500)


class Payload:
    """Unpickling this creates a marker file: what a crafted checkpoint would do in a pod."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def draws() -> list:
    return [random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
            torch.rand(4).tolist(), torch.randint(0, 1000, (3,)).tolist()]


def test_rng_states_restore_exactly_including_cached_gaussians(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second gaussian in Python's state
    np.random.standard_normal()  # ...and in NumPy's
    path = tmp_path / "rng_state_rank0.json"
    save_rng_states(path)
    expected = draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    load_rng_states(path)
    assert draws() == expected
    assert json.loads(path.read_text())["format"] == RNG_FORMAT


def test_an_rng_file_holding_a_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "rng_state_rank0.json"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError, match=r"rng_state_rank0.json: unusable RNG state.*resume: false"):
        load_rng_states(path)
    assert not marker.exists()
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="format 'xwin-rng/1'"):
        load_rng_states(path)


def test_a_checkpoint_in_the_old_pickled_rng_format_starts_afresh_without_loading_it(tmp_path):
    store = LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))
    marker = tmp_path / "ran"
    folder = tmp_path / "node-0"
    folder.mkdir()
    torch.save({"python": Payload(marker)}, folder / "rng_state_rank0.pt")
    checkpoints = Checkpoints(store, "runs/r/sft", tmp_path / "work" / "checkpoints", PLACE, "sft")
    store.commit(f"{checkpoints.prefix}/step-00000004/node-0", folder, producer="sft")
    store.put_record(checkpoints.pointer_key,
                     json.dumps({"tag": "step-00000004", "step": 4, "nodes": 1, "world_size": 1}).encode())

    assert checkpoints.restore(engine=None) is None  # (the engine is never touched)
    assert not marker.exists()


def test_a_current_checkpoint_whose_rng_file_was_replaced_by_a_pickle_is_refused(tmp_path):
    store = LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))
    marker = tmp_path / "ran"
    folder = tmp_path / "node-0"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"step": 4, "epoch": 0, "micro_batch": 8, "tokens": 9}))
    (folder / "metrics.jsonl").write_text("")
    rng_file(folder, 0).write_bytes(pickle.dumps(Payload(marker)))
    checkpoints = Checkpoints(store, "runs/r/sft", tmp_path / "work" / "checkpoints", PLACE, "sft")
    store.commit(f"{checkpoints.prefix}/step-00000004/node-0", folder, producer="sft")
    store.put_record(checkpoints.pointer_key, json.dumps(
        {"tag": "step-00000004", "step": 4, "nodes": 1, "world_size": 1, "rng": RNG_FORMAT}).encode())

    class LoadsNothing:  # DeepSpeed's part of a restore is not what this test is about
        checkpoint_engine = SimpleNamespace()

        def load_checkpoint(self, root, tag, **_):
            return str(Path(root) / tag), None

    with pytest.raises(UserError, match="rng_state_rank0.json: unusable RNG state"):
        checkpoints.restore(LoadsNothing())
    assert not marker.exists()
