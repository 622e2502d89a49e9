"""The `xwin` command. Thin: it parses arguments and calls the library (as OpenRLHF's CLI entry
points sit over its trainers); the top layer, which nothing in the library imports. Heavy
imports (torch, vLLM) happen inside commands, so that `xwin --help` stays instant.

    __init__.py    the app, `xwin stage NAME --config SPEC`
    pipeline.py    run, resume, status, runs, report, cancel, plan (xwin.controller.api)
    render.py      `xwin render`: every Kubernetes object of a run, as YAML
    artifacts.py   `xwin artifacts put | get | ls`
    data.py        `xwin data validate | import-sharegpt | import-mtbench`
    model.py       `xwin model import-gguf | tiny`
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from xwin.cli.artifacts import app as artifacts_app
from xwin.cli.data import app as data_app
from xwin.cli.model import app as model_app
from xwin.cli.pipeline import register as register_pipeline
from xwin.cli.render import register as register_render
from xwin.core.errors import EXIT_OK, EXIT_USER_ERROR, UserError
from xwin.stages.registry import STAGE_NAMES, run_stage

app = typer.Typer(
    help="The Xwin-LM alignment recipe (SFT -> RM -> best-of-N -> RS -> DPO -> eval) as a batch "
    "system: embedded on one machine, or as Kubernetes Jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data", help="Validate and import datasets.")
app.add_typer(model_app, name="model", help="Import and inspect models.")
app.add_typer(artifacts_app, name="artifacts", help="Commit, fetch and list artifacts in the store.")


@app.command()
def stage(
    name: str = typer.Argument(..., help=", ".join(STAGE_NAMES)),
    config: Path = typer.Option(..., "--config", "-c", help="the stage spec (YAML)"),
    shard: str | None = typer.Option(None, help="i/K: this process's shard; default from JOB_COMPLETION_INDEX"),
) -> None:
    """Run one stage: the command every Job container and local process runs."""
    raise typer.Exit(stage_main(name, config, shard))


def stage_main(name: str, spec_path: Path, shard: str | None = None) -> int:
    """Run one stage; the exit code says how it ended: 2 for bad config or data, which the
    controller and the Job's pod failure policy never retry."""
    try:
        metrics = run_stage(name, spec_path, shard)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps({"stage": name, "metrics": metrics}))
    return EXIT_OK


register_pipeline(app)
register_render(app)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()

