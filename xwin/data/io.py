"""Reading and writing record files (JSONL). Every record is validated on the way in, and a bad
one stops the run with an error that names the file, the line and the field: a dataset problem
found at the boundary costs seconds, the same problem found mid-training costs a job.

Writes are atomic (a temporary file in the same folder, then `os.replace`), so a reader never
sees half a file. The sample stage's output grows chunk by chunk instead: `ChunkedJsonlWriter`
appends durably and `read_complete_records` reads it back, ignoring a line torn by a crash.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from xwin.core.errors import UserError
from xwin.core.files import atomic_file
from xwin.data.schemas import KINDS, Record

R = TypeVar("R", bound=Record)


class DataError(UserError):
    """A dataset that cannot be used; the message names the file, the line and the field."""


def record_class(kind_or_class: str | type[R]) -> type[R]:
    """`"pairs"` -> PreferencePair; a Record subclass is returned unchanged."""
    if isinstance(kind_or_class, str):
        try:
            return KINDS[kind_or_class]  # type: ignore[return-value]
        except KeyError:
            raise DataError(
                f"unknown record kind {kind_or_class!r}; expected one of {', '.join(KINDS)}"
            ) from None
    return kind_or_class


def jsonl_files(path: str | Path) -> list[Path]:
    """A file, or every `*.jsonl` in a folder (sorted, so shard order is stable)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        if not files:
            raise DataError(f"{path}: folder holds no *.jsonl files")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return [path]


def format_record_error(source: str, err: ValidationError) -> str:
    """`pairs.jsonl:17: context.2.role: Input should be ...` (first error, then a count)."""
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<record>"
    more = f" (and {len(errors) - 1} more error(s) in this record)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {first['msg']}{more}"


class _NonFinite(ValueError):
    """NaN, Infinity or -Infinity in a line: Python's json reads them, JSON has no such numbers."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _non_finite_at(value: Any, loc: str = "") -> str | None:
    """The dotted location (`responses.1.score`) of the first NaN or infinity in a parsed value."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc or "<record>"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if (found := _non_finite_at(item, f"{loc}.{key}" if loc else str(key))) is not None:
            return found
    return None


def parse_record(line: str, cls: type[R], source: str) -> R:
    """One JSONL line to a validated record; `source` is `file:line` for the error message.
    NaN and Infinity are refused: written back they would become null (a score that vanished)."""
    try:
        raw = json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: invalid JSON: {e.msg} (column {e.colno})") from None
    except _NonFinite as e:
        where = _non_finite_at(json.loads(line))  # parsed again only to name the field
        raise DataError(f"{source}: {where}: {e} is not a finite number (JSON has no NaN or "
                        "Infinity)") from None
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise DataError(format_record_error(source, e)) from None


def read_records(path: str | Path, kind_or_class: str | type[R]) -> Iterator[R]:
    """Stream validated records from a JSONL file or a folder of them; blank lines are skipped.

    Lazy: records are parsed as they are consumed, so a huge file never sits in memory unless the
    caller collects it."""
    cls = record_class(kind_or_class)
    for file in jsonl_files(path):
        with open(file, encoding="utf-8") as f:
            try:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        yield parse_record(line, cls, f"{file}:{lineno}")
            except UnicodeDecodeError:
                raise DataError(_utf8_error(file)) from None


def _utf8_error(file: Path) -> str:
    """`file:line: not valid UTF-8 ...` for the first line that does not decode (text mode
    reads ahead in blocks, so the error it raised cannot say which line)."""
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return _utf8_message(f"{file}:{lineno}", e)
    return f"{file}: not valid UTF-8"


def _utf8_message(source: str, e: UnicodeDecodeError) -> str:
    return (f"{source}: not valid UTF-8 (byte 0x{e.object[e.start]:02x} at column {e.start + 1}); "
            "records files are UTF-8 JSON Lines")


def count_records(path: str | Path, kind_or_class: str | type[Record]) -> int:
    """Validate every record and return how many there are (what `xwin data validate` does)."""
    return sum(1 for _ in read_records(path, kind_or_class))


def record_line(record: Record | Mapping[str, Any]) -> str:
    """One JSONL line. None-valued fields are left out: they are the schemas' defaults."""
    if isinstance(record, Record):
        return record.model_dump_json(exclude_none=True) + "\n"
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_records(path: str | Path, records: Iterable[Record | Mapping[str, Any]]) -> int:
    """Write records as JSONL atomically; returns the count. The previous file (if any) stays
    intact until the new one is complete, also when `records` raises midway."""
    count = 0
    with atomic_file(path) as f:
        for record in records:
            f.write(record_line(record))
            count += 1
    return count


def _complete_length(path: Path) -> int:
    """Bytes up to and including the last newline: everything after it is a torn write."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                return pos - step + cut + 1
            pos -= step
    return 0


def read_complete_records(path: str | Path, kind_or_class: str | type[R]) -> Iterator[R]:
    """Records of a file written by `ChunkedJsonlWriter`, possibly cut short by a crash: a final
    line without its newline is a torn write and is ignored; a missing file reads as empty.
    Complete lines are validated like `read_records` (a bad one is real damage, not a tear)."""
    path = Path(path)
    if not path.exists():
        return
    cls = record_class(kind_or_class)
    remaining = _complete_length(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if remaining <= 0:
                break
            remaining -= len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(_utf8_message(f"{path}:{lineno}", e)) from None
            if line.strip():
                yield parse_record(line, cls, f"{path}:{lineno}")


def resume_partial(path: str | Path, fingerprint: str, kind_or_class: str | type[R]) -> dict[str, R]:
    """Records (by id) that an earlier attempt of the same work flushed to `path` with
    `ChunkedJsonlWriter`. The work is named by `fingerprint` (a digest of config, inputs and
    shard), kept beside the file: a partial file of different work is deleted, not resumed."""
    path = Path(path)
    marker = path.with_name(path.name + ".fingerprint")
    if not marker.exists() or marker.read_text() != fingerprint:
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
        return {}
    return {record.id: record for record in read_complete_records(path, kind_or_class)}


class ChunkedJsonlWriter:
    """Durable, resumable JSONL output: each `append` writes a whole chunk, flushes and fsyncs,
    so after a crash the file holds every acknowledged chunk plus at most one torn line.

    Opening an existing file first cuts such a torn tail, so new lines never glue onto it.
    Resume with `read_complete_records(path, kind)` to learn what is already done."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            complete = _complete_length(self.path)
            if complete != self.path.stat().st_size:
                with open(self.path, "r+b") as f:
                    f.truncate(complete)
                    f.flush()
                    os.fsync(f.fileno())
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close() / __exit__)

    def append(self, records: Iterable[Record | Mapping[str, Any]]) -> int:
        """Write one chunk durably; returns how many records it held."""
        lines = [record_line(r) for r in records]
        if lines:
            self._file.write("".join(lines).encode("utf-8"))
            self._file.flush()
            os.fsync(self._file.fileno())
        return len(lines)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ChunkedJsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
