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

from xwin.controller.lease import read_lease, run_lease_key
from xwin.controller.pipeline import Controller, RunBusy, lock_holder, new_record
from xwin.controller.progress import format_seconds, make_progress, stage_table
from xwin.controller.state import RunRecord, RunStore
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


def run(config_path: Path | str, overrides: list[str] = (), force: set[str] = frozenset()) -> int:
    """`xwin run CONFIG`: a new run of the pipeline; returns the exit code."""
    from xwin.config import load_config

    config = absolute_paths(load_config(config_path, overrides))
    runs = open_runs(config)
    plan_for(config, runs.store, force)  # a plan that cannot work fails before a run exists
    record = new_record(config, runs)
    console.print(f"run [bold]{record.run_id}[/] (workdir {config.run.workdir}, store "
                  f"{config.store.root if config.store.kind == 'local' else config.store.bucket})")
    return _execute(config, record, runs, force)


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
        found = read_lease(runs.store, run_lease_key(record.run_id))
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
    """Signal the run's controller (it stops its stage and saves the record); with no live
    controller, stop leftover stage processes and mark the run cancelled."""
    runs, record = find_run(run_id, workdir, config_path)
    run_dir = runs.run_dir(record.run_id)
    pid = lock_holder(run_dir)
    if pid and pid > 0 and record.controller.get("host") == socket.gethostname():
        os.kill(pid, signal.SIGTERM)
        console.print(f"asked controller {pid} to stop run {record.run_id}")
        deadline = time.monotonic() + 60
        while lock_holder(run_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if lock_holder(run_dir) is None:
            console.print(f"run {record.run_id} stopped; `xwin resume {record.run_id}` continues it")
        else:
            console.print(f"[yellow]controller {pid} is still stopping[/]")
        return
    if record.config["executor"]["kind"] == "local":
        from xwin.executors.local import kill_leftovers

        kill_leftovers([p for s in record.stages.values() for a in s.attempts
                        if a.status == "running" for p in a.pids])
    else:
        from xwin.controller.jobs import make_executor

        make_executor(config_from_record(record)).cancel(record.run_id)
    for stage in record.stages.values():
        if stage.status == "running":
            stage.status = "cancelled"
            for attempt in stage.attempts:
                if attempt.status == "running":
                    attempt.status, attempt.ended_at, attempt.reason = "cancelled", utc_now(), "cancelled"
    if record.status == "running":
        record.status = "cancelled"
    runs.save(record)
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
