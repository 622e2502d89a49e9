"""`xwin run | resume | status | report | runs | cancel`: the controller's commands. Thin: they
parse arguments and call `xwin.controller.api`. Exit codes: 0 done, 1 a stage failed after its
retries (or the store / cluster API stayed unreachable past `run.outage_patience_s`), 2 bad
config or data (nothing to retry), 3 the run is busy in another controller, 75 detached
(Kubernetes: SIGTERM/Ctrl-C left the stage Jobs running; resume adopts them), 130 interrupted
(resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

WORKDIR_HELP = "the run's workdir (run.workdir of its config)"
CONFIG_HELP = "a pipeline config naming the store and workdir (default: found from --workdir)"


def _names(values: list[str] | None) -> list[str]:
    """`--only sft,rm --only eval` -> [sft, rm, eval]."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `xwin` app."""

    @app.command()
    def run(
        config: Annotated[Path, typer.Argument(help="pipeline config (YAML), e.g. examples/demo-cpu.yaml")],
        set_: Annotated[list[str], typer.Option("--set", "-s", help="override: section.field=value")] = [],  # noqa: B006 (typer never mutates it)
        only: Annotated[list[str], typer.Option(help="run just these stages (comma-separated)")] = [],  # noqa: B006
        from_: Annotated[str | None, typer.Option("--from", help="skip stages before this one")] = None,
        until: Annotated[str | None, typer.Option(help="stop after this stage")] = None,
        force: Annotated[list[str], typer.Option(
            help="rerun these stages (and what depends on them) even if cached")] = [],  # noqa: B006
        dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan (keys, what runs) and exit")] = False,
        run_id: Annotated[str | None, typer.Option(
            "--run-id", envvar="XWIN_RUN_ID",
            help="a stable run id (default: run.id of the config, else <name>-<UTC time>); if "
            "that run exists it is resumed, as `xwin resume ID` does")] = None,
    ) -> None:
        """Run the pipeline: every stage whose output is not in the store yet. With a run id
        that names an existing run, resume that run instead (its running Jobs are adopted)."""
        from xwin.controller import api
        from xwin.core.errors import UserError

        overrides = list(set_)
        if only:
            overrides.append(f"run.only=[{','.join(_names(only))}]")
        if from_:
            overrides.append(f"run.start_from={from_}")
        if until:
            overrides.append(f"run.until={until}")
        try:
            if dry_run:
                api.print_plan(config, overrides, set(_names(force)))
                return
            code = api.run(config, overrides, force=set(_names(force)), run_id=run_id)
        except UserError as e:
            _fail(str(e))
        raise typer.Exit(code)

    @app.command()
    def resume(
        run_id: Annotated[str, typer.Argument(help="run id (see `xwin runs`) or 'latest'")] = "latest",
        workdir: Annotated[Path, typer.Option(help=WORKDIR_HELP)] = Path(".xwin"),
        config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    ) -> None:
        """Continue a stopped or failed run: finished stages are kept, the rest run."""
        from xwin.controller import api
        from xwin.core.errors import UserError

        try:
            code = api.resume(run_id, workdir, config)
        except UserError as e:
            _fail(str(e))
        raise typer.Exit(code)

    @app.command()
    def status(
        run_id: Annotated[str, typer.Argument(help="run id or 'latest'")] = "latest",
        workdir: Annotated[Path, typer.Option(help=WORKDIR_HELP)] = Path(".xwin"),
        config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="the run record as JSON")] = False,
    ) -> None:
        """A run's stages: status, attempts, elapsed time, metrics, errors."""
        from xwin.controller import api
        from xwin.core.errors import UserError

        try:
            raise typer.Exit(api.show_status(run_id, workdir, config, as_json))
        except UserError as e:
            _fail(str(e))

    @app.command()
    def report(
        run_id: Annotated[str, typer.Argument(help="run id or 'latest'")] = "latest",
        workdir: Annotated[Path, typer.Option(help=WORKDIR_HELP)] = Path(".xwin"),
        config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    ) -> None:
        """(Re)build a run's report.md and plots from its artifacts."""
        from xwin.controller import api
        from xwin.core.errors import UserError

        try:
            path = api.build_report(run_id, workdir, config)
        except UserError as e:
            _fail(str(e))
        typer.echo(path)

    @app.command()
    def runs(
        workdir: Annotated[Path, typer.Option(help=WORKDIR_HELP)] = Path(".xwin"),
        config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    ) -> None:
        """List runs, newest last."""
        from xwin.controller import api
        from xwin.core.errors import UserError

        try:
            api.list_runs(workdir, config)
        except UserError as e:
            _fail(str(e))

    @app.command()
    def cancel(
        run_id: Annotated[str, typer.Argument(help="run id or 'latest'")],
        workdir: Annotated[Path, typer.Option(help=WORKDIR_HELP)] = Path(".xwin"),
        config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    ) -> None:
        """Stop a run: delete its stage Jobs (Kubernetes) or processes (local); the only command
        that deletes Jobs. Finished stages stay in the store for a later run to reuse."""
        from xwin.controller import api
        from xwin.core.errors import UserError

        try:
            api.cancel(run_id, workdir, config)
        except UserError as e:
            _fail(str(e))
