"""`xwin artifacts put | get | ls`: the store by hand. The usual use is committing a base model
or a dataset once (a 7B HF folder to S3, say) and wiring its key into a run with
`run.inputs: {sft.model: models/llama-2-7b}`; `get` and `ls` look at what stages committed.
The store comes from a pipeline config's `store` section (and XWIN_STORE__* variables)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", help="pipeline config whose `store` is used (default: the local .xwin/store)")]
SetOption = Annotated[list[str], typer.Option("--set", "-s", help="override: store.field=value")]


def _store(config: Path | None, overrides: list[str]):
    from xwin.artifacts.factory import open_store
    from xwin.config import load_config

    return open_store(load_config(config, overrides).store)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def put(
    source: Annotated[Path, typer.Argument(help="a folder (its files) or a single file")],
    key: Annotated[str, typer.Argument(help="artifact key, e.g. models/llama-2-7b")],
    config: ConfigOption = None,
    set_: SetOption = [],  # noqa: B006 (typer never mutates it)
) -> None:
    """Commit a local folder or file as artifact KEY (replacing a previous commit of KEY as one
    step for readers)."""
    from xwin.artifacts.store import ArtifactError
    from xwin.core.errors import UserError

    if not source.exists():
        _fail(f"{source}: no such file or folder")
    try:
        store = _store(config, list(set_))
        with tempfile.TemporaryDirectory(prefix="xwin-put-") as staging:
            folder = source
            if not source.is_dir():  # an artifact is a folder: a lone file becomes one holding it
                shutil.copy2(source, Path(staging) / source.name)
                folder = Path(staging)
            manifest = store.commit(key, folder, producer="user", metadata={"source": str(source.resolve())})
    except (UserError, ArtifactError) as e:
        _fail(str(e))
    typer.echo(f"{key}: {len(manifest.files)} files, {manifest.total_bytes:,} bytes, "
               f"commit {manifest.commit_id}")


@app.command()
def get(
    key: Annotated[str, typer.Argument(help="artifact key")],
    dest: Annotated[Path | None, typer.Option(help="copy here (default: the local cache)")] = None,
    config: ConfigOption = None,
    set_: SetOption = [],  # noqa: B006
) -> None:
    """Fetch an artifact (checked against its manifest) and print its local folder."""
    from xwin.artifacts.store import ArtifactError
    from xwin.core.errors import UserError

    try:
        typer.echo(str(_store(config, list(set_)).fetch(key, dest)))
    except (UserError, ArtifactError) as e:
        _fail(str(e))


@app.command("ls")
def list_artifacts(
    prefix: Annotated[str, typer.Argument(help="only keys starting with this")] = "",
    config: ConfigOption = None,
    set_: SetOption = [],  # noqa: B006
) -> None:
    """Committed artifacts: key, size, files, producer, commit time."""
    from xwin.artifacts.store import ArtifactError
    from xwin.core.errors import UserError

    try:
        store = _store(config, list(set_))
        rows = [(key, store.manifest(key)) for key in store.list(prefix)]
    except (UserError, ArtifactError) as e:
        _fail(str(e))
    for key, manifest in rows:
        if manifest is None:  # deleted between list and read
            continue
        typer.echo(f"{key}\t{manifest.total_bytes:>14,} B\t{len(manifest.files):>5} files\t"
                   f"{manifest.producer}\t{manifest.created_at}")
