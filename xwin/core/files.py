"""Atomic file writes: a reader sees the old file or the complete new one, never a mix, also when
the writer is killed midway. Shared by the record files (xwin.data.io) and the artifact store's
manifests and run records (xwin.artifacts)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing ("w" text or "wb" bytes); on a clean exit
    it is fsynced and renamed over `path`, on an exception it is removed and `path` is untouched.

    Not tempfile.mkstemp: its files are mode 0600 whatever the umask, and an artifact must be
    readable by whoever reads it next (another container user, say)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode {mode!r}: expected 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_text_atomically(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (a crash could otherwise undo it); a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
