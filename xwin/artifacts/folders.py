"""The local-folder side that both backends share: the rules for keys, commit ids and the file
paths of a manifest, hashing a folder into manifest entries, checking a folder against its
manifest, atomic writes and moves, the download cache and progress bars.

A manifest read from the store is input like any other: whoever can write the bucket can write
one, and its commit id and file paths become local paths on fetch. `parse_manifest` refuses any
the store itself would never write (UnsafeManifest) before anything is written or deleted."""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError
from tqdm import tqdm

from xwin.artifacts.store import (
    ArtifactCorrupt,
    ArtifactError,
    FileEntry,
    InvalidKey,
    Manifest,
    UnsafeManifest,
)
from xwin.core.clock import utc_now

MANIFEST_NAME = "MANIFEST.json"
COMMITS_DIR = ".commits"  # <key>/.commits/<commit_id>/<files>
PROGRESS_MIN_BYTES = 50 * 2**20  # below this a transfer is quick enough to need no bar
VERIFY_ENV = "XWIN_VERIFY_SHA256"  # "1": re-hash every file on each fetch, not just sizes
_BUFFER = 1 << 20

# One key segment: no leading dot (".commits", ".records" and ".staging" are the store's own),
# only characters that need no escaping in a path or an S3 key. Matched with fullmatch: `$`
# would also accept a trailing newline.
_SEGMENT = re.compile(r"[A-Za-z0-9_=+@,-][A-Za-z0-9._=+@,-]*")
_COMMIT_ID = re.compile(r"(\d{8}T\d{6}Z)-[0-9a-f]{12}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHOWN_PROBLEMS = 5


def key_problem(key: str) -> str | None:
    """Why `key` cannot name an artifact, or None if it can."""
    if not isinstance(key, str) or not key:
        return "empty"
    for segment in key.split("/"):
        if segment == MANIFEST_NAME:
            return f"{MANIFEST_NAME} is reserved"
        if not _SEGMENT.fullmatch(segment):
            return (
                f"segment {segment!r} must be non-empty, must not start with '.', and may use "
                "only letters, digits and . _ - = + @ ,"
            )
    return None


def is_key(key: str) -> bool:
    return key_problem(key) is None


def check_key(key: str) -> str:
    if problem := key_problem(key):
        raise InvalidKey(f"artifact key {key!r}: {problem}")
    return key


def new_commit_id() -> str:
    """Sortable by time (so garbage collection can tell a stale commit from a running one) and
    unique (so a download cache can be keyed by it alone)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"


def commit_started_at(commit_id: str) -> datetime | None:
    m = _COMMIT_ID.fullmatch(commit_id)
    if not m:
        return None
    return datetime.strptime(m[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def is_stale(commit_id: str, older_than_s: float) -> bool:
    started = commit_started_at(commit_id)
    if started is None:
        return False
    return (datetime.now(timezone.utc) - started).total_seconds() > older_than_s


def file_path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside an artifact, or None: manifest paths are relative,
    POSIX and normalised, so that `folder / path` stays inside `folder`."""
    if not path:
        return "is empty"
    if "\\" in path:
        return "has a backslash (manifest paths use '/')"
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return "has a control character"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "climbs out of the artifact with '..'"
    if "." in parts or posixpath.normpath(path) != path:
        return "is not normalised (an empty or '.' segment)"
    return None


def file_paths_problems(paths: list[str]) -> list[str]:
    """Every unusable path of a manifest's file list: bad ones, repeats, and a file that is also
    the folder of another (the second could never be written)."""
    problems = []
    seen: set[str] = set()
    for i, path in enumerate(paths):
        if problem := file_path_problem(path):
            problems.append(f"files[{i}].path {path!r} {problem}")
        elif path in seen:
            problems.append(f"files[{i}].path {path!r} is listed twice")
        seen.add(path)
    folders = {path.rsplit("/", n)[0] for path in seen for n in range(1, path.count("/") + 1)}
    problems += [f"files[{i}].path {path!r} is also the folder of another file"
                 for i, path in enumerate(paths) if path in folders]
    return problems


def manifest_problems(manifest: Manifest, key: str) -> list[str]:
    """Why a manifest read at `key` is not one the store wrote there (empty if it could be)."""
    problems = []
    if manifest.key != key:
        problems.append(f"key {manifest.key!r} is not the key it was read from")
    if not _COMMIT_ID.fullmatch(manifest.commit_id):
        problems.append(
            f"commit_id {manifest.commit_id!r} is not one the store writes "
            "(YYYYMMDDTHHMMSSZ-<12 hex digits>)"
        )
    problems += file_paths_problems([f.path for f in manifest.files])
    for i, f in enumerate(manifest.files):
        if f.size < 0:
            problems.append(f"files[{i}].size {f.size} is negative")
        if not _SHA256.fullmatch(f.sha256):
            problems.append(f"files[{i}].sha256 {f.sha256[:80]!r} is not a sha256 hex digest")
    return problems


def _shown(problems: list[str]) -> str:
    more = len(problems) - _SHOWN_PROBLEMS
    return "; ".join(problems[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")


def check_file_paths(key: str, paths: list[str]) -> None:
    """Before a commit copies anything: a file name readers would refuse (a backslash, a
    control character) fails now, not on every later fetch."""
    if problems := file_paths_problems(paths):
        raise UnsafeManifest(f"cannot commit {key!r}: {_shown(problems)}")


def list_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file under folder, sorted; symlinks are followed
    (a Hugging Face snapshot is a folder of symlinks into its blob store)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a folder, nothing to commit")
    found = []
    seen = set()  # real folders walked, so a symlink loop is walked once, not forever
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(
            d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in seen
        )
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_file():
                raise ArtifactError(f"{path}: not a regular file (a broken symlink?)")
            found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def hash_file(path: Path, on_bytes: Callable[[int], Any] | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_BUFFER):
            digest.update(chunk)
            size += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return size, digest.hexdigest()


def copy_and_hash(
    src: Path, dst: Path, on_bytes: Callable[[int], Any] | None = None
) -> tuple[int, str]:
    """Copy src to dst (fsynced) and hash what was copied in the same read: (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_BUFFER):
            fout.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


def scan_folder(folder: Path, desc: str) -> list[tuple[FileEntry, Path]]:
    """Manifest entries (relative path, size, sha256) for every file under folder."""
    files = list_files(folder)
    total = sum(path.stat().st_size for _, path in files)
    entries = []
    with progress(total, f"hash {desc}") as on_bytes:
        for rel, path in files:
            size, sha256 = hash_file(path, on_bytes)
            entries.append((FileEntry(path=rel, size=size, sha256=sha256), path))
    return entries


def new_manifest(
    key: str,
    commit_id: str,
    files: list[FileEntry],
    *,
    producer: str,
    config_digest: str,
    metadata: dict[str, Any] | None,
) -> Manifest:
    """The manifest, checked to serialise now: a metadata value JSON cannot hold must fail
    before gigabytes are uploaded, not after."""
    check_file_paths(key, [f.path for f in files])
    manifest = Manifest(
        key=key,
        commit_id=commit_id,
        producer=producer,
        config_digest=config_digest,
        created_at=utc_now(),
        files=files,
        metadata=metadata or {},
    )
    manifest_bytes(manifest)
    return manifest


def manifest_bytes(manifest: Manifest) -> bytes:
    try:
        return manifest.model_dump_json(indent=2).encode()
    except PydanticSerializationError as e:
        raise ArtifactError(f"artifact {manifest.key}: metadata is not JSON-serialisable: {e}") from e


def parse_manifest(data: bytes, where: str, key: str) -> Manifest:
    """The manifest read at `key` (from `where`), refused (UnsafeManifest, naming the key and
    the field) unless its key, commit id and file paths are ones the store writes."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValueError as e:
        raise ArtifactCorrupt(f"{where}: unreadable manifest: {e}") from e
    if problems := manifest_problems(manifest, key):
        raise UnsafeManifest(f"{where}: refusing the manifest of {key!r}: {_shown(problems)}")
    return manifest


def file_problem(path: Path, entry: FileEntry, *, full: bool) -> str | None:
    """Why the file at path does not match its manifest entry, or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{entry.path}: missing"
    if size != entry.size:
        return f"{entry.path}: {size} bytes, the manifest says {entry.size}"
    if full:
        _, actual = hash_file(path)
        if actual != entry.sha256:
            return (
                f"{entry.path}: sha256 {actual[:16]}..., the manifest says {entry.sha256[:16]}..."
            )
    return None


def folder_problems(folder: Path, manifest: Manifest, *, full: bool) -> list[str]:
    problems = []
    with progress(manifest.total_bytes if full else 0, f"verify {manifest.key}") as on_bytes:
        for entry in manifest.files:
            if problem := file_problem(folder / entry.path, entry, full=full):
                problems.append(problem)
            on_bytes(entry.size)
    return problems


def verify_folder(folder: Path, manifest: Manifest, *, full: bool) -> None:
    """ArtifactCorrupt naming the files that differ from the manifest (sizes; sha256 if full)."""
    problems = folder_problems(folder, manifest, full=full)
    if problems:
        raise ArtifactCorrupt(
            f"artifact {manifest.key} (commit {manifest.commit_id}) at {folder}: {_shown(problems)}"
        )


def staging_dir_for(dest: Path, commit_id: str) -> Path:
    """A fresh folder beside dest (same filesystem, so the final move is a rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".partial-{commit_id}-", dir=dest.parent))


def move_into_place(staged: Path, dest: Path) -> None:
    """Move a complete, verified folder to dest. An absent or empty dest becomes the folder in
    one rename; a dest that already holds files receives ours file by file (same names are
    replaced, other files are left alone, like `cp -r staged/. dest/`)."""
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    if not dest.exists():
        os.rename(staged, dest)
        return
    if not dest.is_dir():
        raise ArtifactError(f"{dest}: exists and is not a folder")
    for rel, path in list_files(staged):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest / rel)
    shutil.rmtree(staged, ignore_errors=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads) on this machine, held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_root() -> Path:
    """Where the S3 backend keeps downloaded artifacts: $XWIN_CACHE_DIR, else the XDG cache."""
    if env := os.environ.get("XWIN_CACHE_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xwin"


def verify_sha256_default() -> bool:
    return os.environ.get(VERIFY_ENV, "").lower() in ("1", "true", "yes")


@contextmanager
def progress(total: int, desc: str) -> Iterator[Callable[[int], None]]:
    """A thread-safe `on_bytes(n)` callback driving a tqdm bar, shown only for big transfers."""
    lock = threading.Lock()
    with tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=total < PROGRESS_MIN_BYTES,
        mininterval=1.0,
        leave=False,
    ) as bar:

        def on_bytes(n: int) -> None:
            with lock:
                bar.update(n)

        yield on_bytes


def write_folder_atomically(out_dir: Path, write) -> Path:
    """`write(tmp_dir)` fills a temporary sibling folder, which then replaces out_dir: a crash
    never leaves a half-written folder where a reader would look for a finished one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; model folders are read by other users/pods
    try:
        write(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
