"""`xwin model ...`: bring base models in as HF safetensors folders. A source that cannot be
used (not a GGUF file, a folder without a tokenizer) exits with code 2 and names the file."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("import-gguf")
def import_gguf_command(
    source: str = typer.Argument(..., help="a .gguf file, or `smollm2` for the packaged SmolLM2-135M-Instruct"),
    output: Path = typer.Argument(..., help="the HF folder to write"),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16"),
) -> None:
    """De-quantize a GGUF model into an HF safetensors folder that transformers, vLLM and
    DeepSpeed load unchanged."""
    from xwin.core.errors import UserError
    from xwin.models.loading import import_gguf

    try:
        path = import_gguf(source, output, dtype=dtype)
    except UserError as e:
        _fail(str(e))
    size = sum(f.stat().st_size for f in path.iterdir())
    typer.echo(f"wrote {path} ({size / 2**20:.1f} MiB)")


@app.command("tiny")
def tiny_command(
    output: Path = typer.Argument(..., help="the HF folder to write"),
    tokenizer: str = typer.Option("smollm2", help="tokenizer source: HF folder, .gguf or packaged name"),
    hidden_size: int = typer.Option(64),
    layers: int = typer.Option(2),
) -> None:
    """A tiny random Llama with a real tokenizer and chat template, for quick trials."""
    from xwin.core.errors import UserError
    from xwin.models.tiny import build_tiny_llama

    try:
        path = build_tiny_llama(output, tokenizer, hidden_size=hidden_size, num_layers=layers)
    except UserError as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")
