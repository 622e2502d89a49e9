"""The controller as functions: what the `xwin run/resume/status/report/runs/cancel` commands
call, and what a notebook or a test can call directly."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from xwin.artifacts.store import StoreUnavailable, StoreUnreachable
from xwin.controller.lease import read_lease, run_lease_key
from xwin.controller.pipeline import Controller, OutageClock, RunBusy, lock_holder, new_record
from xwin.controller.progress import format_seconds, make_progress, stage_table
from xwin.controller.state import RunRecord, RunStore, check_run_id
from xwin.core.clock import utc_now
from xwin.core.errors import EXIT_BUSY, UserError

console = Console(highlight=False)
if not console.is_terminal:
    console.width = max(console.width, 150)  # a log file has no width; keep table rows whole


def absolute_paths(config):
    """Local paths in a run's config made absolute: `xwin resume` and the stage processes may
    start in another folder."""
    config.run = config.run.model_copy(update={"workdir": Path(config.run.workdir).absolute()})
    config.executor = config.executor.model_copy(
        update={"profiles_dir": Path(config.executor.profiles_dir).absolute()})
    if config.store.kind == "local":
        config.store = config.store.model_copy(update={"root": Path(config.store.root).absolute()})
    return config


def config_from_record(record: RunRecord):
    from pydantic import ValidationError

    from xwin.config import PipelineConfig
    from xwin.core.config import format_validation_error
    from xwin.core.errors import ConfigError

    try:
        return PipelineConfig(**record.config)  # init values outrank XWIN_* variables and files
    except ValidationError as e:  # the stages' configs changed since the run started
        raise ConfigError(
            format_validation_error(e, f"run {record.run_id}'s recorded config")
            + "\nthis version of xwin reads the config differently; start a new run with "
            "`xwin run CONFIG` (finished stages are reused where their keys still match)"
        ) from e


def open_runs(config) -> RunStore:
    from xwin.artifacts.factory import open_store

    store = open_store(config.store)
    store.check()
    return RunStore(store, Path(config.run.workdir))


def open_runs_patiently(config) -> RunStore:
    """open_runs, waiting out an unreachable store as a running controller does (capped
    backoff, `run.outage_patience_s`): a controller pod replaced during an S3 outage waits for
    S3 instead of failing at once and using up its Job's retries. A missing bucket or refused
    credentials fail at once."""
    clock = OutageClock(config.run.outage_backoff_max_s, config.run.outage_patience_s)
    while True:
        try:
            return open_runs(config)
        except StoreUnreachable as e:
            pause = clock.failed("S3 unreachable")
            if pause is None:
                raise
            console.print(f"[yellow]waiting:[/] {clock.what} since {clock.since}: {e}; trying again "
                          f"in {pause:.0f}s")
            time.sleep(pause)


def runs_of_record(record: RunRecord) -> RunStore:
    """The run's store from its record alone: no PipelineConfig, so no stage module (and no
    torch) is imported just to look at a run."""
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store

    store = open_store(StoreConfig.model_validate(record.config["store"]))
    return RunStore(store, Path(record.config["run"]["workdir"]))


def find_run(run_id: str, workdir: Path, config_path: Path | None) -> tuple[RunStore, RunRecord]:
    """The run record, from the store named by --config, else by the run's local mirror."""
    if config_path is not None:
        from xwin.config import load_config

        runs = open_runs(absolute_paths(load_config(config_path)))
    else:
        local_runs = Path(workdir) / "runs"
        if run_id == "latest":
            states = sorted(local_runs.glob("*/state.json"), key=lambda p: p.stat().st_mtime)
            if not states:
                raise UserError(f"no runs under {local_runs}")
            run_id = states[-1].parent.name
        state = local_runs / run_id / "state.json"
        if not state.exists():
            raise UserError(f"no run {run_id!r} under {local_runs} (pass --workdir, or --config "
                            "to look in the config's store)")
        mirror = RunRecord.model_validate_json(state.read_bytes())
        runs = runs_of_record(mirror)
        try:
            return runs, runs.load(run_id)
        except StoreUnavailable as e:  # an outage: the mirror says what the controller waits for
            console.print(f"[yellow]the store is unreachable ({e}); showing the local copy[/]")
            return runs, mirror
    if run_id == "latest":
        run_id = runs.latest()
    return runs, runs.load(run_id)


def _execute(config, record: RunRecord, runs: RunStore, force: set[str] = frozenset()) -> int:
    with make_progress(console) as progress:
        controller = Controller(config, record, runs.store, runs, progress=progress, force=force)
        try:
            code = controller.execute()
        except RunBusy as e:
            console.print(f"[red]error:[/] {e}")
            return EXIT_BUSY
    summarize(controller.record)
    return code


def run(config_path: Path | str, overrides: list[str] = (), force: set[str] = frozenset(),
        run_id: str | None = None) -> int:
    """`xwin run CONFIG`: a new run of the pipeline, or, with a stable run id (`run_id`, else
    `run.id` of the config) that names an existing run, that run resumed: a controller pod
    restarted by its Job continues its run and adopts its running stage Jobs. Returns the exit
    code."""
    from xwin.config import load_config

    config = absolute_paths(load_config(config_path, overrides))
    run_id = run_id or config.run.id
    if run_id:
        check_run_id(run_id)
        config.run = config.run.model_copy(update={"id": run_id})
    runs = open_runs_patiently(config)
    existing = runs.find(run_id) if run_id else None
    if existing is not None:
        return _resume_existing(config, existing, runs, force)
    plan_for(config, runs.store, force)  # a plan that cannot work fails before a run exists
    record = new_record(config, runs, run_id)
    console.print(f"run [bold]{record.run_id}[/] (workdir {config.run.workdir}, store "
                  f"{config.store.root if config.store.kind == 'local' else config.store.bucket})")
    return _execute(config, record, runs, force)


def _resume_existing(config, record: RunRecord, runs: RunStore, force: set[str]) -> int:
    """`xwin run --run-id ID` of a run that exists: `xwin resume ID`, with its recorded config."""
    if record.status == "cancelled":  # a controller pod replaced after `xwin cancel` stops here
        raise UserError(f"run {record.run_id} was cancelled (`xwin cancel`); `xwin resume "
                        f"{record.run_id}` continues it, another --run-id starts a new run")
    console.print(f"run [bold]{record.run_id}[/] exists ({record.status}); resuming it, as "
                  f"`xwin resume {record.run_id}` does")
    if config.model_dump(mode="json") != record.config:
        console.print("[yellow]note:[/] the config differs from the one the run was started with; "
                      "the run continues with its recorded config (a new --run-id starts a run "
                      "with this one, reusing the finished stages whose keys still match)")
    if force:
        console.print("[yellow]note:[/] --force is ignored when resuming a run")
    if record.status == "succeeded":
        console.print(f"run {record.run_id} already succeeded; checking its outputs are still there")
    return _execute(config_from_record(record), record, runs)


def resume(run_id: str, workdir: Path, config_path: Path | None = None) -> int:
    runs, record = find_run(run_id, workdir, config_path)
    if record.status == "succeeded":
        console.print(f"run {record.run_id} already succeeded; checking its outputs are still there")
    console.print(f"resuming run [bold]{record.run_id}[/]")
    return _execute(config_from_record(record), record, runs)


def summarize(record: RunRecord) -> None:
    if not console.is_terminal:
        console.print(stage_table(record))
    for stage in record.stages.values():
        if stage.status == "failed" and stage.error:
            console.print(f"[red]{stage.name} failed:[/] {stage.error}", markup=True)
    if record.status == "succeeded":
        console.print(f"[green]run {record.run_id} succeeded[/] in {format_seconds(record.elapsed_s)}")
        if record.report:
            console.print(f"report: {record.report}")
    elif record.status == "interrupted":
        console.print(f"[magenta]run {record.run_id} interrupted[/]; continue with "
                      f"`xwin resume {record.run_id}`")
    elif record.status == "detached":
        console.print(f"[magenta]run {record.run_id} detached[/]: {record.error}")
    else:
        console.print(f"[red]run {record.run_id} {record.status}[/]: {record.error or ''}\n"
                      f"fix the cause, then `xwin resume {record.run_id}`; after a config "
                      "change, `xwin run` the config again (finished stages are reused)")


def show_status(run_id: str, workdir: Path, config_path: Path | None, as_json: bool = False) -> int:
    runs, record = find_run(run_id, workdir, config_path)
    if as_json:
        print(record.model_dump_json(indent=2))
        return 0
    holder = None
    if record.status == "running":
        try:
            found = read_lease(runs.store, run_lease_key(record.run_id))
        except StoreUnavailable:  # the local copy is shown; whether its controller lives is unknown
            stopped = False
        else:
            if found is not None:  # the run's lease says whether a controller is alive, anywhere
                holder = found[0] if found[0] is not None and found[0].live(time.time()) else None
                stopped = holder is None
            else:  # a run from before leases: only a controller on this host can be checked
                stopped = lock_holder(Path(record.workdir) / "runs" / record.run_id) is None \
                    and record.controller.get("host") == socket.gethostname()
        if stopped:
            record.status = "interrupted"  # its controller died without saying so
    console.print(stage_table(record))
    if holder is not None:
        console.print(f"controller: {holder.describe()}")
    for stage in record.stages.values():
        if stage.waiting_for and stage.status in ("pending", "running"):
            console.print(f"{stage.name}: {stage.waiting_for}")  # whole: the table cuts notes
    for stage in record.stages.values():
        if stage.error and stage.status == "failed":
            console.print(f"[red]{stage.name}:[/] {stage.error}")
    if record.status == "running" and record.waiting:
        console.print(f"[yellow]waiting:[/] {record.waiting}")
    elif record.status == "detached":
        running = [s.name for s in record.stages.values() if s.status == "detached"]
        console.print("[magenta]detached[/]: no controller is watching"
                      + (f"; stage Jobs of {', '.join(running)} are still running" if running else "")
                      + f"; `xwin resume {record.run_id}` (or `xwin run CONFIG --run-id "
                      f"{record.run_id}`) adopts them, `xwin cancel {record.run_id}` deletes them")
    elif record.status in ("failed", "interrupted", "cancelled") and record.error:
        console.print(f"{record.status}: {record.error}")
    if record.report:
        console.print(f"report: {record.report}")
    return 0


def build_report(run_id: str, workdir: Path, config_path: Path | None = None) -> Path:
    from xwin.controller.report import write_report

    runs, record = find_run(run_id, workdir, config_path)
    path = write_report(record, runs.store, runs)
    record.report = str(path)
    runs.save(record)
    return path


def list_runs(workdir: Path, config_path: Path | None = None) -> None:
    records: dict[str, RunRecord] = {}
    for state in (Path(workdir) / "runs").glob("*/state.json"):
        record = RunRecord.model_validate_json(state.read_bytes())
        records[record.run_id] = record
    if config_path is not None:
        from xwin.config import load_config

        runs = open_runs(absolute_paths(load_config(config_path)))
        for run_id in runs.index():
            try:
                records[run_id] = runs.load(run_id)
            except UserError:  # its id was claimed, then the run died before its first record
                continue
    if not records:
        console.print("no runs")
        return
    table = Table("run", "status", "created", "elapsed", "stages done", "report")
    for record in sorted(records.values(), key=lambda r: r.created_at):
        done = sum(s.status in ("succeeded", "cached", "supplied") for s in record.stages.values())
        table.add_row(record.run_id, record.status, record.created_at.replace("+00:00", "Z"),
                      format_seconds(record.elapsed_s), f"{done}/{len(record.stages)}",
                      record.report or "")
    console.print(table)


def cancel(run_id: str, workdir: Path, config_path: Path | None = None) -> None:
    """Stop a run for good; the only command that deletes stage Jobs. A live controller on this
    machine is signalled first (it stops its local stage processes, or detaches from its Jobs);
    then the run is marked cancelled in the store and its leftover processes or Jobs go. A
    controller elsewhere (a pod) sees the mark and starts no new attempt when its Job is gone."""
    runs, record = find_run(run_id, workdir, config_path)
    run_dir = runs.run_dir(record.run_id)
    pid = lock_holder(run_dir)
    local = record.config["executor"]["kind"] == "local"
    if pid and pid > 0 and record.controller.get("host") == socket.gethostname():
        os.kill(pid, signal.SIGTERM)
        console.print(f"asked controller {pid} to stop run {record.run_id}")
        deadline = time.monotonic() + 60
        while lock_holder(run_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if lock_holder(run_dir) is not None:
            console.print(f"[yellow]controller {pid} is still stopping[/]")
            return
        if local:
            console.print(f"run {record.run_id} stopped; `xwin resume {record.run_id}` continues it")
            return
        record = runs.load(record.run_id)  # as the detached controller left it
    running = [p for s in record.stages.values() for a in s.attempts if a.status == "running"
               for p in a.pids]
    for stage in record.stages.values():
        if stage.status in ("running", "detached"):
            stage.status = "cancelled"
            for attempt in stage.attempts:
                if attempt.status == "running":
                    attempt.status, attempt.ended_at, attempt.reason = "cancelled", utc_now(), "cancelled"
    if record.status in ("running", "detached"):
        record.status = "cancelled"
        record.error = "cancelled by `xwin cancel`"
    runs.save(record)  # before the Jobs go: a controller that sees its Job deleted reads this
    if local:
        from xwin.executors.local import kill_leftovers

        kill_leftovers(running)
    else:
        from xwin.controller.jobs import make_executor

        make_executor(config_from_record(record)).cancel(record.run_id)
    console.print(f"run {record.run_id} cancelled")


def plan_for(config, store, force: set[str] = frozenset()):
    from xwin.controller.graph import make_plan
    from xwin.controller.jobs import profiles_for, sharded_counts

    shards = sharded_counts(profiles_for(config))
    return make_plan(config, store, shards=shards, force=force)


def print_plan(config_path: Path | str, overrides: list[str], force: set[str]) -> None:
    from xwin.config import load_config

    config = absolute_paths(load_config(config_path, overrides))
    plan = plan_for(config, open_runs(config).store, force)
    table = Table("stage", "decision", "key", "inputs")
    for stage in plan.stages.values():
        table.add_row(stage.name, stage.decision, stage.key,
                      "\n".join(f"{k} = {v}" for k, v in stage.inputs.items()))
    console.print(table)
    console.print(json.dumps({"run": [s.name for s in plan.to_run()]}))
