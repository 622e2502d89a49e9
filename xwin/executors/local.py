"""The embedded executor: a stage's launch description run as local processes.

What a pod of the stage's Job would run, this runs as a process: the same `xwin stage NAME
--config SPEC` command and environment (`job_processes`, from `xwin.executors.launch`). A gang
of N nodes becomes N processes that rendezvous on 127.0.0.1; a sharded stage becomes K
processes, in parallel or one after another.

Each process runs in its own session (process group): stopping a stage signals the whole group,
SIGTERM first, then SIGKILL after a grace period, so nothing a stage spawned outlives it. On
Linux the children also get SIGTERM if the controller dies (PR_SET_PDEATHSIG), and `xwin resume`
kills any group recorded in the run state that is still alive.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from xwin.artifacts.factory import open_store
from xwin.artifacts.stage_io import part_key
from xwin.core.errors import EXIT_USER_ERROR
from xwin.core.files import write_text_atomically
from xwin.core.net import free_port
from xwin.executors.base import Executor, StageJob, StageResult
from xwin.executors.launch import stage_launch

log = logging.getLogger(__name__)

POLL_S = 0.2


@dataclass
class LocalProcess:
    """One process of a stage attempt: what a pod would run, and where its output goes."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    label: str  # "", "rank-1", "shard-3" (for log names and messages)
    group: int = 0  # processes of one group run together; groups run one after another



def write_spec(job: StageJob) -> Path:
    """The stage spec as the Job's ConfigMap would hold it, kept per attempt for inspection."""
    path = job.log_dir.parent / "specs" / f"{job.stage}.{job.attempt}.yaml"
    write_text_atomically(path, yaml.safe_dump(job.spec.model_dump(mode="json"), sort_keys=False))
    return path


# Rank and rendezvous variables the controller itself may carry (started under torchrun, or
# set by an in-process DeepSpeed init): a stage gets its own from the rendered Job, never these.
DISTRIBUTED_VARS = frozenset({
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
    "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX", "CROSS_RANK", "CROSS_SIZE",
})


def inherited_env() -> dict[str, str]:
    """This process's environment (it carries what Secrets would: store credentials) less the
    distributed variables."""
    return {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARS}


def job_processes(job: StageJob, spec_path: Path, done_shards: set[int] = frozenset(),
                  parallel_shards: bool = False) -> list[LocalProcess]:
    """The processes of one attempt: one per completion of the stage's launch, with the launch's
    environment over this process's own (which carries what Secrets would: store credentials)."""
    launch = stage_launch(job, str(spec_path))
    # the image's entry point `xwin`; here: this interpreter's package
    argv = [sys.executable, "-m", "xwin.cli", *launch.argv[1:]]
    # the cluster's fixed port may be taken on a shared machine
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    shards = launch.completions if job.profile.kind == "sharded" else 1
    main_log = job.log_dir / f"{job.stage}.{job.attempt}.log"
    procs: list[LocalProcess] = []
    for index in range(launch.completions):
        if shards > 1 and index in done_shards:
            continue
        # Waiting OpenMP threads sleep instead of spinning: on a machine whose cores are shared
        # (the controller, other shards, other work) spinning threads slowed a 135M model's
        # generation 20x in our measurements. A user's own setting wins.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **inherited_env(), **launch.env_for(index, rendezvous)}
        label = f"shard-{index}" if shards > 1 else (f"rank-{index}" if index else "")
        log_path = main_log if not procs else job.log_dir / f"{job.stage}.{job.attempt}.{label}.log"
        if shards > 1:  # explicit, though JOB_COMPLETION_INDEX says the same
            procs.append(LocalProcess([*argv, "--shard", f"{index}/{shards}"], env, log_path,
                                      label, group=0 if parallel_shards else index))
        else:
            procs.append(LocalProcess(argv, env, log_path, label))
    _share_cores(procs, os.environ, parallel=len({p.group for p in procs}) < len(procs))
    return procs


def _share_cores(procs: list[LocalProcess], env: dict[str, str], parallel: bool) -> None:
    """Processes running side by side split the cores instead of each taking all of them."""
    if not parallel or len(procs) < 2 or "OMP_NUM_THREADS" in env:
        return
    threads = str(max(1, (os.cpu_count() or 1) // len(procs)))
    for p in procs:
        p.env["OMP_NUM_THREADS"] = threads


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the controller dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_groups(pgids: list[int], grace_s: float) -> None:
    """SIGTERM the process groups, then SIGKILL whatever is left of them after grace_s."""
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_alive(g) for g in pgids):
        time.sleep(0.1)
    for pgid in pgids:
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def is_stage_process(pid: int) -> bool:
    """Whether pid is (still) an `xwin stage` process, so a recycled pid is never killed."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"stage" in cmdline and any(b"xwin" in part for part in cmdline)


def kill_leftovers(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """Stop the process groups of a previous controller's stage processes (resume, cancel)."""
    killed = []
    for pid in pids:
        if is_stage_process(pid):
            log.warning("stopping leftover stage process group %d", pid)
            killed.append(pid)
    stop_groups(killed, grace_s)
    return killed


def last_error(log_path: Path, lines: int = 20) -> tuple[str | None, str]:
    """(the stage's `error: ...` line or last line, the log's last lines) for the message."""
    try:
        text = log_path.read_bytes().decode(errors="replace")  # keep "\r" (tqdm redraws)
    except OSError:
        return None, ""
    tail = [line.split("\r")[-1] for line in text.split("\n") if line.strip()][-lines:]
    errors = [line.removeprefix("error:").strip() for line in tail if line.startswith("error:")]
    reason = errors[-1] if errors else (tail[-1] if tail else None)
    return reason, "\n".join(tail)


class LocalExecutor(Executor):
    """Runs attempts as local process groups; `cancel` may be called from a signal handler."""

    def __init__(self, parallel_shards: bool = False, grace_s: float = 10.0,
                 on_spawn: Callable[[StageJob, list[int]], None] | None = None):
        self.parallel_shards = parallel_shards
        self.grace_s = grace_s
        self.on_spawn = on_spawn  # the controller records pids in the run state
        self._cancelled: set[str] = set()

    def cancel(self, run_id: str) -> None:
        self._cancelled.add(run_id)  # the polling loop stops the processes

    def run(self, job: StageJob) -> StageResult:
        job.log_dir.mkdir(parents=True, exist_ok=True)
        spec_path = write_spec(job)
        procs = job_processes(job, spec_path, self._done_shards(job), self.parallel_shards)
        main_log = job.log_dir / f"{job.stage}.{job.attempt}.log"
        groups = sorted({p.group for p in procs})
        for group in groups:
            result = self._run_group(job, [p for p in procs if p.group == group])
            if result.status != "succeeded":
                return result
        return StageResult(status="succeeded", exit_code=0, log_path=main_log)

    def _done_shards(self, job: StageJob) -> set[int]:
        """Shards committed by an earlier attempt are not run again."""
        if job.spec.shards <= 1:
            return set()
        store = open_store(job.spec.store)
        count = job.spec.shards
        return {i for i in range(count) if store.exists(part_key(job.spec.output, i, count))}

    def _run_group(self, job: StageJob, procs: list[LocalProcess]) -> StageResult:
        """Start processes together; the first failure stops the others (a gang cannot go on
        without one of its ranks; independent shards are left to finish)."""
        gang = job.spec.shards <= 1
        running: list[tuple[LocalProcess, subprocess.Popen]] = []
        try:
            for p in procs:
                p.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(p.log_path, "ab") as out:
                    out.write(f"$ {' '.join(p.argv)}  [{p.label or 'main'}]\n".encode())
                    out.flush()
                    popen = subprocess.Popen(
                        p.argv, env=p.env, stdout=out, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True,
                        # only ctypes' prctl runs in the child before exec: fork-safe
                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
                    )
                running.append((p, popen))
            if self.on_spawn:
                self.on_spawn(job, [popen.pid for _, popen in running])
            failure: tuple[LocalProcess, int] | None = None
            deadline = job.profile.active_deadline_s  # as a Job's activeDeadlineSeconds
            started = time.monotonic()
            while True:
                if job.run_id in self._cancelled:
                    self._stop(running)
                    return StageResult(status="cancelled", reason="cancelled",
                                       log_path=procs[0].log_path)
                if deadline is not None and time.monotonic() - started > deadline:
                    self._stop(running)  # a hung rendezvous or a stuck stage
                    return StageResult(status="failed", reason=f"ran past active_deadline_s={deadline}",
                                       log_path=procs[0].log_path)
                codes = [(p, popen.poll()) for p, popen in running]
                for p, code in codes:
                    if code not in (None, 0) and failure is None:
                        failure = (p, code)
                if failure and gang:
                    self._stop(running)
                    break
                if all(code is not None for _, code in codes):
                    break
                time.sleep(POLL_S)
        except BaseException:
            self._stop(running)
            raise
        if failure is None:
            return StageResult(status="succeeded", exit_code=0, log_path=procs[0].log_path)
        proc, code = failure
        reason, _ = last_error(proc.log_path)
        if code < 0:
            reason = f"killed by {signal.Signals(-code).name}" + (f" after: {reason}" if reason else "")
        where = f" [{proc.label}]" if proc.label else ""
        return StageResult(status="failed", exit_code=code, reason=f"{reason or 'no output'}{where}",
                           permanent=code == EXIT_USER_ERROR, log_path=proc.log_path)

    def _stop(self, running: list[tuple[LocalProcess, subprocess.Popen]]) -> None:
        # every group, finished leaders' too: a launcher's workers may outlive it
        stop_groups([popen.pid for _, popen in running], self.grace_s)
        for _, popen in running:
            try:
                popen.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                popen.kill()
