"""Periodic checkpoints in the artifact store, resuming from them, and exporting the final model.

A checkpoint is DeepSpeed's own (weights, optimizer and LR-schedule state, every ZeRO shard) plus
what DeepSpeed does not keep: the data position and counters (trainer_state.json), each rank's
RNG states (rng_state_rank<R>.json), and the metrics history. Store layout, for output key K:

    K.ckpt/step-00000500/node-0    artifact: the files node 0's ranks wrote
    K.ckpt/step-00000500/node-1    ...one per node
    K.ckpt/latest                  record: {"tag", "step", "nodes", "world_size", "rng"}, written last

Saving: every rank writes into the node's local folder; after a barrier each node's local rank 0
commits that folder under its node key (one node, e.g. the local executor: node-0 holds every
rank's files); after a second barrier rank 0 moves the `latest` pointer and deletes older steps.
A crash before the pointer moves leaves the previous checkpoint in force. Multi-node runs set
DeepSpeed's use_node_local_storage, so each node writes the model states its ranks read back;
nodes that share one folder (a shared volume as workdir) simply commit identical files twice.
Resuming: each node's local rank 0 fetches every node's part and links them into one folder,
then all ranks load it; a changed world size starts afresh (ZeRO shards are per rank).

Whoever can write the store can write a checkpoint, so nothing in one may run code when loaded:
RNG states are JSON, and the pointer names their format (`rng`); DeepSpeed's own files, which it
would unpickle with `torch.load(weights_only=False)`, are loaded with `weights_only=True` and
only the few DeepSpeed classes they hold allowed (`load_without_pickled_code`). A checkpoint
from before (RNG states pickled in rng_state_rank<R>.pt) is never loaded: the stage starts
afresh, as for a changed world size.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xwin.artifacts.store import ArtifactNotFound, ArtifactStore
from xwin.core.errors import UserError
from xwin.train.launch import ProcessPlace, barrier

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
HISTORY_FILE = "metrics.jsonl"


@dataclass
class TrainState:
    """Where a run is: what a resumed run needs besides the engine's own state."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_batch: int = 0  # micro-batches of `epoch` already trained
    tokens: int = 0  # tokens trained, all ranks


RNG_FORMAT = "xwin-rng/1"  # JSON, written by save_rng_states; the pointer's `rng` names it


def rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_state_rank{rank}.json"


def _tensor_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _text_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def rng_states() -> dict[str, Any]:
    """This process's RNG states as plain JSON values: Python's (version, 625 ints, gauss_next),
    NumPy's legacy MT19937 (name, 624 ints, pos, has_gauss, cached_gaussian), torch's (and
    CUDA's) byte states as base64."""
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "format": RNG_FORMAT,
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"bit_generator": name, "key": key.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": _tensor_text(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        states["cuda"] = _tensor_text(torch.cuda.get_rng_state())
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    py, npy = states["python"], states["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state((npy["bit_generator"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(_text_tensor(states["torch"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(_text_tensor(states["cuda"]))


def save_rng_states(path: Path) -> None:
    Path(path).write_text(json.dumps(rng_states()))


def load_rng_states(path: Path) -> None:
    """Restore what save_rng_states wrote. Only JSON is read: a file that is anything else (a
    pickle, say) is refused, naming the file."""
    try:
        states = json.loads(Path(path).read_bytes())
        if not isinstance(states, dict) or states.get("format") != RNG_FORMAT:
            raise ValueError(f"expected a JSON object of format {RNG_FORMAT!r}")
        set_rng_states(states)
    except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise UserError(f"{path}: unusable RNG state ({e}); start the stage afresh with "
                        "`resume: false` in its config") from None


# The DeepSpeed classes in its checkpoint files (the ZeRO optimizers' state: loss scaler, stage,
# fragment addresses); torch's weights_only unpickler rebuilds them as data, and nothing else.
_DEEPSPEED_CLASSES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def load_without_pickled_code(engine) -> None:
    """Make `engine.load_checkpoint` read its files with `torch.load(weights_only=True)` (DeepSpeed
    itself passes weights_only=False, so any pickle in the store would run in the pod). A file
    naming anything else is refused, naming the file and the class."""

    def load(path, map_location=None):
        allowed = [getattr(importlib.import_module(module), name) for module, name in _DEEPSPEED_CLASSES]
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            found = _UNSUPPORTED_GLOBAL.search(str(e))
            what = f"it names {found[1]}" if found else str(e).splitlines()[0]
            raise UserError(f"checkpoint file {path}: refused, {what}, which xwin does not load from "
                            "the store; start the stage afresh with `resume: false` in its config") from None

    engine.checkpoint_engine.load = load


class Checkpoints:
    """The checkpoints of one stage output (see the module docstring)."""

    def __init__(self, store: ArtifactStore, output_key: str, local_root: Path, place: ProcessPlace,
                 producer: str):
        self.store = store
        self.prefix = f"{output_key}.ckpt"
        self.local_root = Path(local_root)
        self.place = place
        self.producer = producer

    def _node_key(self, tag: str, node: int) -> str:
        return f"{self.prefix}/{tag}/node-{node}"

    @property
    def pointer_key(self) -> str:
        return f"{self.prefix}/latest"

    def latest(self) -> dict[str, Any] | None:
        raw = self.store.get_record(self.pointer_key)
        pointer = json.loads(raw) if raw else None
        return pointer if pointer and pointer.get("tag") else None

    def save(self, engine, state: TrainState, history: list[dict]) -> None:
        """Collective: every rank calls it at the same step."""
        tag = f"step-{state.step:08d}"
        folder = self.local_root / tag
        engine.save_checkpoint(str(self.local_root), tag=tag)
        folder.mkdir(parents=True, exist_ok=True)  # ranks that wrote no DeepSpeed file
        save_rng_states(rng_file(folder, self.place.rank))
        if self.place.is_main:
            (folder / STATE_FILE).write_text(json.dumps(asdict(state)))
            (folder / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
        barrier()
        if self.place.is_node_leader:
            self.store.commit(
                self._node_key(tag, self.place.node_rank), folder, producer=self.producer,
                metadata={"step": state.step, "node": self.place.node_rank},
            )
        barrier()
        if self.place.is_main:
            pointer = {"tag": tag, "step": state.step, "nodes": self.place.nnodes,
                       "world_size": self.place.world_size, "rng": RNG_FORMAT}
            self.store.put_record(self.pointer_key, json.dumps(pointer).encode())
            for key in self.store.list(self.prefix + "/"):
                if not key.startswith(f"{self.prefix}/{tag}/"):
                    self.store.delete(key)
        if self.place.is_node_leader:
            for old in self.local_root.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        barrier()
        log.info("checkpoint %s committed under %s", tag, self.prefix)

    def restore(self, engine) -> tuple[TrainState, list[dict]] | None:
        """Collective: load the latest committed checkpoint into `engine`; None = start afresh."""
        pointer = self.latest()
        if pointer is None:
            return None
        if pointer["world_size"] != self.place.world_size:
            log.warning("checkpoint %s was written by %d processes, this run has %d: starting afresh",
                        pointer["tag"], pointer["world_size"], self.place.world_size)
            return None
        if pointer.get("rng") != RNG_FORMAT:
            log.warning("checkpoint %s holds RNG states in a format this xwin no longer loads "
                        "(pickles, which could run code from the store): starting afresh",
                        pointer["tag"])
            return None
        tag = pointer["tag"]
        merged_root = self.local_root.parent / "resume"
        folder = merged_root / tag
        if self.place.is_node_leader:
            try:
                self._link_parts(tag, pointer["nodes"], folder)
            except ArtifactNotFound as e:
                raise RuntimeError(f"checkpoint {tag} is incomplete in the store: {e}") from e
        barrier()
        load_without_pickled_code(engine)
        load_path, _ = engine.load_checkpoint(
            str(merged_root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {folder}")
        state = TrainState(**json.loads((folder / STATE_FILE).read_text()))
        load_rng_states(rng_file(folder, self.place.rank))
        history = [json.loads(line) for line in (folder / HISTORY_FILE).read_text().splitlines() if line]
        log.info("resumed from checkpoint %s (step %d)", tag, state.step)
        return state, history

    def _link_parts(self, tag: str, nodes: int, folder: Path) -> None:
        """One folder holding every node's files (symlinks into the fetched artifacts)."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for node in range(nodes):
            part = self.store.fetch(self._node_key(tag, node))
            for src in sorted(p for p in part.rglob("*") if p.is_file()):
                dst = folder / src.relative_to(part)
                if not dst.exists():  # the same file from two nodes: identical, keep one
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.symlink_to(src.absolute())

    def clear(self) -> None:
        """After the final model is committed the checkpoints are dead weight: delete them."""
        if self.place.is_main:
            self.store.put_record(self.pointer_key, json.dumps({"tag": None, "completed": True}).encode())
            for key in self.store.list(self.prefix + "/"):
                self.store.delete(key)
        if self.place.is_node_leader:
            shutil.rmtree(self.local_root, ignore_errors=True)
            shutil.rmtree(self.local_root.parent / "resume", ignore_errors=True)


def gathered_state_dict(module: torch.nn.Module, zero_stage: int, is_main: bool,
                        only_trainable: bool = False) -> dict[str, torch.Tensor] | None:
    """The full state dict on rank 0 (None elsewhere), tied weights once (named_parameters skips
    the second name of a shared tensor, so save_pretrained keeps the tie). Collective under ZeRO-3:
    every rank must call it; parameters are gathered one at a time, so peak memory stays one
    tensor above the shard. `only_trainable`: the parameters that train alone, no buffers (LoRA's
    adapters)."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if only_trainable and not param.requires_grad:
            continue
        gathered = deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=zero_stage == 3)
        with gathered:
            if is_main:
                state[name] = param.data.detach().cpu().clone()
    if not is_main or only_trainable:
        return state if is_main else None
    persistent = set(module.state_dict())
    for name, buffer in module.named_buffers():  # buffers are never sharded
        if name in persistent:
            state[name] = buffer.detach().cpu().clone()
    return state


