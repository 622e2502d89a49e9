"""Periodic checkpoints in the artifact store, resuming from them, and exporting the final model.

A checkpoint is DeepSpeed's own (weights, optimizer and LR-schedule state, every ZeRO shard) plus
what DeepSpeed does not keep: the data position and counters (trainer_state.json), each rank's
RNG states (rng_state_rank<R>.json), and the metrics history. Store layout, for output key K:

    K.ckpt/attempt-<run>-<n>/step-00000500/node-0    artifact: the files node 0's ranks wrote
    K.ckpt/attempt-<run>-<n>/step-00000500/node-1    ...one per node
    K.ckpt/attempt-<run>-<n>/latest                  record: {"tag", "step", "nodes", "world_size",
                                                     "rng", "attempt", "saved_at"}, written last

Every attempt writes under its own prefix (its run id and the controller's attempt number, the
same in every rank), so two writers of one key, say two runs whose stages share an output key or
a retry started while a slow predecessor still saves, never delete each other's checkpoints.
Saving: every rank writes into the node's local folder; after a barrier each node's local rank 0
commits that folder under its node key (one node, e.g. the local executor: node-0 holds every
rank's files); after a second barrier rank 0 moves its attempt's `latest` pointer and deletes its
own older steps, nothing else. A crash before the pointer moves leaves the previous checkpoint
in force. Multi-node runs set DeepSpeed's use_node_local_storage, so each node writes the model
states its ranks read back; nodes that share one folder (a shared volume as workdir) simply
commit identical files twice.
Resuming: rank 0 picks the newest complete checkpoint of the key across every attempt's pointer
(highest step; complete: every node's part is committed) and tells the other ranks; each node's
local rank 0 fetches every node's part and links them into one folder, then all ranks load it;
a changed world size starts afresh (ZeRO shards are per rank). Once the final model is committed
an attempt deletes its own checkpoints and those of the earlier attempts of its run (which have
ended: the controller starts attempt n+1 only after attempt n), never another run's.
A checkpoint from before attempts had prefixes (K.ckpt/step-*/node-*, K.ckpt/latest) is
resumed from like any other attempt's, and deleted by the attempt that finishes the output.

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
from xwin.core.clock import utc_now
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


ATTEMPT_PREFIX = "attempt-"
_UNSAFE_IN_KEY = re.compile(r"[^A-Za-z0-9_=+@,.-]")
_TAG = re.compile(r"step-\d{8}")


def attempt_name(run_id: str, attempt: int) -> str:
    """The key segment of one attempt's checkpoints: `attempt-<run>-<n>`."""
    return f"{ATTEMPT_PREFIX}{_UNSAFE_IN_KEY.sub('-', run_id)}-{attempt}"


def _agreed(value: Any) -> Any:
    """Rank 0's `value` on every rank: ranks that each read the store could see different
    checkpoints while another writer commits one. (broadcast_object_list pickles, but only
    between this job's own processes, never from the store.)"""
    if not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _valid_pointer(raw: bytes | None) -> dict[str, Any] | None:
    """A `latest` record as written by save, or None: anything else (a cleared pointer, a
    half-understood or crafted record) names no checkpoint; its tag becomes part of a key."""
    try:
        pointer = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("tag"), str):
        return None
    counts = [pointer.get(k) for k in ("step", "nodes", "world_size")]
    if not _TAG.fullmatch(pointer["tag"]) or not all(isinstance(n, int) and n >= 0 for n in counts) \
            or pointer["nodes"] < 1:
        return None
    return pointer


class Checkpoints:
    """The checkpoints of one stage output written by one attempt, and the resume from the
    newest of any attempt (see the module docstring)."""

    def __init__(self, store: ArtifactStore, output_key: str, local_root: Path, place: ProcessPlace,
                 producer: str, *, attempt: str = attempt_name("adhoc", 1)):
        self.store = store
        self.key_prefix = f"{output_key}.ckpt"  # every attempt's checkpoints of this output
        self.attempt = attempt
        self.prefix = f"{self.key_prefix}/{attempt}"  # this attempt's own
        self.local_root = Path(local_root) / attempt
        self.saved_root = self.local_root / "saved"  # what this attempt's ranks write
        self.resume_root = self.local_root / "resume"  # a fetched checkpoint, linked together
        self.place = place
        self.producer = producer
        self._fetched: list[Path] = []  # folders of a checkpoint being resumed from

    @property
    def pointer_key(self) -> str:
        return f"{self.prefix}/latest"

    def _attempt_prefixes(self) -> list[str]:
        """The prefix of every attempt with a checkpoint of this key in the store."""
        prefixes = set()
        for key in self.store.list(self.key_prefix + "/"):
            segment = key[len(self.key_prefix) + 1:].split("/", 1)[0]
            if segment.startswith(ATTEMPT_PREFIX):
                prefixes.add(f"{self.key_prefix}/{segment}")
            elif _TAG.fullmatch(segment):
                prefixes.add(self.key_prefix)  # written before attempts had prefixes
        return sorted(prefixes)

    def _complete(self, prefix: str, pointer: dict[str, Any]) -> bool:
        return all(self.store.exists(f"{prefix}/{pointer['tag']}/node-{n}")
                   for n in range(pointer["nodes"]))

    def latest(self) -> tuple[str, dict[str, Any]] | None:
        """The newest complete checkpoint of this output, whichever attempt wrote it: (its
        attempt's prefix, its pointer); None when there is none."""
        found = [(prefix, pointer) for prefix in self._attempt_prefixes()
                 if (pointer := _valid_pointer(self.store.get_record(f"{prefix}/latest")))]
        found.sort(key=lambda f: (f[1]["step"], str(f[1].get("saved_at", ""))), reverse=True)
        for prefix, pointer in found:
            if self._complete(prefix, pointer):
                return prefix, pointer
            log.info("checkpoint %s/%s is incomplete in the store; looking at older ones",
                     prefix, pointer["tag"])
        return None

    def save(self, engine, state: TrainState, history: list[dict]) -> None:
        """Collective: every rank calls it at the same step."""
        tag = f"step-{state.step:08d}"
        folder = self.saved_root / tag
        engine.save_checkpoint(str(self.saved_root), tag=tag)
        folder.mkdir(parents=True, exist_ok=True)  # ranks that wrote no DeepSpeed file
        save_rng_states(rng_file(folder, self.place.rank))
        if self.place.is_main:
            (folder / STATE_FILE).write_text(json.dumps(asdict(state)))
            (folder / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
        barrier()
        if self.place.is_node_leader:
            self.store.commit(
                f"{self.prefix}/{tag}/node-{self.place.node_rank}", folder, producer=self.producer,
                metadata={"step": state.step, "node": self.place.node_rank, "attempt": self.attempt},
            )
        barrier()
        if self.place.is_main:
            pointer = {"tag": tag, "step": state.step, "nodes": self.place.nnodes,
                       "world_size": self.place.world_size, "rng": RNG_FORMAT,
                       "attempt": self.attempt, "saved_at": utc_now()}
            self.store.put_record(self.pointer_key, json.dumps(pointer).encode())
            for key in self.store.list(self.prefix + "/"):  # this attempt's own keys only
                if not key.startswith(f"{self.prefix}/{tag}/"):
                    self.store.delete(key)
        if self.place.is_node_leader:
            for old in self.saved_root.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        barrier()
        log.info("checkpoint %s committed under %s", tag, self.prefix)

    def restore(self, engine) -> tuple[TrainState, list[dict]] | None:
        """Collective: load the newest committed checkpoint of any attempt into `engine`; None =
        start afresh."""
        chosen = _agreed(self.latest() if self.place.is_main else None)
        if chosen is None:
            return None
        prefix, pointer = chosen
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
        folder = self.resume_root / tag
        if self.place.is_node_leader:
            try:
                self._link_parts(prefix, tag, pointer["nodes"], folder)
            except ArtifactNotFound as e:
                raise RuntimeError(f"checkpoint {prefix}/{tag} is incomplete in the store: {e}") from e
        barrier()
        load_without_pickled_code(engine)
        load_path, _ = engine.load_checkpoint(
            str(self.resume_root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {folder}")
        state = TrainState(**json.loads((folder / STATE_FILE).read_text()))
        load_rng_states(rng_file(folder, self.place.rank))
        history = [json.loads(line) for line in (folder / HISTORY_FILE).read_text().splitlines() if line]
        barrier()  # every rank has read the linked files: the fetched parts may go
        for part in self._fetched:
            self.store.release(part)
        self._fetched = []
        log.info("resumed from checkpoint %s/%s (step %d)", prefix, tag, state.step)
        return state, history

    def _link_parts(self, prefix: str, tag: str, nodes: int, folder: Path) -> None:
        """One folder holding every node's files (symlinks into the fetched artifacts)."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for node in range(nodes):
            part = self.store.fetch(f"{prefix}/{tag}/node-{node}")
            self._fetched.append(part)
            for src in sorted(p for p in part.rglob("*") if p.is_file()):
                dst = folder / src.relative_to(part)
                if not dst.exists():  # the same file from two nodes: identical, keep one
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.symlink_to(src.absolute())

    def _ended_attempts_of_this_run(self) -> list[str]:
        """Prefixes of this run's earlier attempts (attempt-<run>-<m>, m < n): they have ended."""
        head, _, number = self.attempt.rpartition("-")
        if not number.isdigit():
            return []
        ended = []
        for prefix in self._attempt_prefixes():
            other = prefix.rsplit("/", 1)[-1]
            other_head, _, other_number = other.rpartition("-")
            if other_head == head and other_number.isdigit() and int(other_number) < int(number):
                ended.append(prefix)
        return ended

    def clear(self) -> None:
        """After the final model is committed this attempt's checkpoints, those of its run's
        earlier attempts and any of the layout before attempt prefixes are dead weight: delete
        them. Other runs' are theirs to delete."""
        if self.place.is_main:
            self.store.put_record(self.pointer_key, json.dumps({"tag": None, "completed": True}).encode())
            dead = {self.prefix, *self._ended_attempts_of_this_run()}
            for key in self.store.list(self.key_prefix + "/"):
                owner = key[len(self.key_prefix) + 1:].split("/", 1)[0]
                if f"{self.key_prefix}/{owner}" in dead or _TAG.fullmatch(owner):
                    self.store.delete(key)
        if self.place.is_node_leader:
            shutil.rmtree(self.local_root, ignore_errors=True)


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


