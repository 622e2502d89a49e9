"""Run state: one record per run in the artifact store (`runs/<run_id>`, via put_record), mirrored
to `<workdir>/runs/<run_id>/state.json` for a quick look. It lists every stage with its
decision, status, artifact key, attempts, timings and metrics: what `xwin status` shows and what
`xwin resume` continues from.

The run index is one record per run, `runs-index/<run_id>`, written once with create-if-absent:
that write is what claims the run id, so two `xwin run` at once (two pods on one bucket) never
get the same id and both appear in `xwin runs`. Runs made before read from the old single
`runs/index` record too."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from xwin.artifacts.store import RecordConflict
from xwin.core.clock import parse_time, utc_now
from xwin.core.errors import UserError
from xwin.core.files import write_bytes_atomically

log = logging.getLogger(__name__)

StageStatus = Literal[
    "pending", "running", "succeeded", "cached", "supplied", "skipped", "failed", "cancelled",
    "detached",
]
# detached: the controller stopped watching (SIGTERM/SIGINT under the Kubernetes executor) and
# left the stage Jobs running; `xwin resume` (or `xwin run --run-id`) adopts them.
RunStatus = Literal["running", "succeeded", "failed", "cancelled", "interrupted", "detached"]
FINAL_STAGE_STATES = ("succeeded", "cached", "supplied", "skipped")

RECORD_PREFIX = "runs"
INDEX_PREFIX = "runs-index"  # one record per run: {"name", "created_at"}
LEGACY_INDEX_KEY = "runs/index"  # the single read-modify-write index of older versions


class Attempt(BaseModel):
    number: int
    started_at: str
    ended_at: str | None = None
    exit_code: int | None = None
    status: Literal["running", "succeeded", "failed", "cancelled"] = "running"
    reason: str | None = None
    queue: str | None = Field(None, description="its Kueue state while running: pending quota, "
                              "admitted, preempted (None: no queue)")
    preemptions: int = Field(0, description="times Kueue preempted it; it resumed each time")
    log: str | None = None
    pids: list[int] = Field(default_factory=list, description="local process groups, for cleanup")


class StageState(BaseModel):
    name: str
    key: str
    status: StageStatus = "pending"
    inputs: dict[str, str] = Field(default_factory=dict)
    shards: int = 1
    attempts: list[Attempt] = Field(default_factory=list)
    started_at: str | None = None
    ended_at: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    waiting_for: str | None = Field(None, description="`waiting for <key> (run R, stage S)`: "
                                    "another run is producing this stage's output")

    @property
    def elapsed_s(self) -> float | None:
        """Time spent in attempts (not the time a stopped run sat waiting for `resume`)."""
        if not self.attempts:
            return None
        now = datetime.now(timezone.utc)
        return sum(((parse_time(a.ended_at) if a.status != "running" and a.ended_at else now)
                    - parse_time(a.started_at)).total_seconds() for a in self.attempts)


class RunRecord(BaseModel):
    run_id: str
    name: str
    created_at: str
    updated_at: str
    status: RunStatus = "running"
    config: dict[str, Any] = Field(description="the resolved pipeline config (no secrets in it)")
    workdir: str
    controller: dict[str, Any] = Field(default_factory=dict, description="host and pid")
    stages: dict[str, StageState] = Field(default_factory=dict)
    ended_at: str | None = None
    report: str | None = None
    error: str | None = None
    waiting: str | None = Field(None, description="why a running controller is waiting instead of "
                                "working, e.g. 'S3 unreachable since ...' (None: it is not)")

    @property
    def elapsed_s(self) -> float:
        """From the start to the end of the run (time stopped before a resume included)."""
        end = parse_time(self.ended_at) if self.status != "running" and self.ended_at else None
        return ((end or datetime.now(timezone.utc)) - parse_time(self.created_at)).total_seconds()


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RUN_ID_PATTERN = _RUN_ID.pattern


def check_run_id(run_id: str) -> str:
    """A run id names store keys, folders and Kubernetes labels: letters, digits, . _ -."""
    if not _RUN_ID.match(run_id):
        raise UserError(f"{run_id!r} is not a run id (letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit)")
    return run_id


def candidate_run_ids(name: str) -> Iterator[str]:
    """`<name>-<UTC time>`, then with a counter: `-2`, `-3`, ..."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    yield f"{base}-{stamp}"
    yield from (f"{base}-{stamp}-{n}" for n in itertools.count(2))


class IndexEntry(BaseModel):
    """A run's entry in the index. The claim token makes every entry's bytes unique, so a
    writer that reads back an entry after a lost answer knows whether it is its own."""

    name: str
    created_at: str
    claim: str = Field(default_factory=lambda: secrets.token_hex(8))


class RunStore:
    """Run records in the artifact store plus the local mirror under `<workdir>/runs/`."""

    def __init__(self, store, workdir: Path):
        self.store = store
        self.workdir = Path(workdir)

    def run_dir(self, run_id: str) -> Path:
        return self.workdir / "runs" / run_id

    def exists(self, run_id: str) -> bool:
        return self.run_dir(run_id).exists() or self.store.get_record(f"{RECORD_PREFIX}/{run_id}") is not None

    def save(self, record: RunRecord, local_only: bool = False) -> None:
        """The local mirror first, then the store: while the store is unreachable
        (`local_only`) the mirror still shows `xwin status` why the controller waits."""
        record.updated_at = utc_now()
        data = record.model_dump_json(indent=2).encode()
        write_bytes_atomically(self.run_dir(record.run_id) / "state.json", data)
        if not local_only:
            self.store.put_record(f"{RECORD_PREFIX}/{record.run_id}", data)

    def find(self, run_id: str) -> RunRecord | None:
        """The run's record from the store (a restarted controller has a fresh workdir, so the
        store is the truth), else the local mirror; None if there is no such run."""
        check_run_id(run_id)
        data = self.store.get_record(f"{RECORD_PREFIX}/{run_id}")
        if data is None:
            local = self.run_dir(run_id) / "state.json"
            data = local.read_bytes() if local.exists() else None
        return None if data is None else RunRecord.model_validate_json(data)

    def load(self, run_id: str) -> RunRecord:
        record = self.find(run_id)
        if record is None:
            raise UserError(f"no run {run_id!r} (see `xwin runs`)")
        return record

    def claim_run_id(self, name: str, created_at: str) -> str:
        """A new run id, claimed by creating its index entry (create-if-absent): of two runs
        started in the same second, one gets `<id>`, the other `<id>-2`. Ids of runs made before
        (a record or a local folder without an entry) are skipped too."""
        entry = IndexEntry(name=name, created_at=created_at).model_dump_json().encode()
        for run_id in candidate_run_ids(name):
            if self.exists(run_id):
                continue
            try:
                self.store.create_record(f"{INDEX_PREFIX}/{run_id}", entry)
            except RecordConflict:
                continue
            return run_id
        raise AssertionError("unreachable: candidate_run_ids never ends")

    def add_to_index(self, record: RunRecord) -> None:
        """Make sure the run has its index entry (a run made before the per-run index gets
        one when it is resumed); an entry already there is left as it is."""
        entry = IndexEntry(name=record.name, created_at=record.created_at)
        try:
            self.store.create_record(f"{INDEX_PREFIX}/{record.run_id}",
                                     entry.model_dump_json().encode())
        except RecordConflict:
            pass

    def index(self) -> dict[str, dict[str, Any]]:
        """run id -> {"name", "created_at"}: the per-run entries, and the old single index."""
        index: dict[str, dict[str, Any]] = {}
        if data := self.store.get_record(LEGACY_INDEX_KEY):
            try:
                legacy = json.loads(data)
            except ValueError:
                legacy = None
            if isinstance(legacy, dict):
                index.update((k, v) for k, v in legacy.items()
                             if isinstance(v, dict) and _RUN_ID.match(k))
            else:
                log.warning("ignoring the damaged run index %s", LEGACY_INDEX_KEY)
        for key in self.store.list_records(f"{INDEX_PREFIX}/"):
            run_id = key[len(INDEX_PREFIX) + 1:]
            raw = self.store.get_record(key)
            if not _RUN_ID.match(run_id) or raw is None:
                continue
            try:
                index[run_id] = IndexEntry.model_validate_json(raw).model_dump(exclude={"claim"})
            except ValidationError:
                log.warning("ignoring the damaged run index entry %s", key)
        return index

    def list_ids(self) -> list[str]:
        """Runs in the store's index and in the local workdir, oldest first."""
        index = self.index()
        ids = set(index)
        runs = self.workdir / "runs"
        if runs.is_dir():
            ids |= {p.name for p in runs.iterdir() if (p / "state.json").exists()}
        return sorted(ids, key=lambda r: (index.get(r, {}).get("created_at", ""), r))

    def latest(self) -> str:
        records = []
        for run_id in self.list_ids():
            try:
                records.append(self.load(run_id))
            except UserError:  # an id claimed by a run that died before its first record
                continue
        if not records:
            raise UserError("no runs yet")
        return max(records, key=lambda r: r.created_at).run_id


def controller_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}
