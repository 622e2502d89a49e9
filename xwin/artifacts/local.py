"""The artifact store in a local folder (the embedded default, or a shared volume).

Layout under the store's root:

    <key>/MANIFEST.json              the committed manifest; it names the commit below
    <key>/.commits/<commit_id>/...   that commit's files (read-only)
    .staging/<commit_id>/...         a commit being copied (invisible to readers)
    .records/<key>                   small mutable records
    .records/.lock                   serialises conditional record writes (create, replace)
    .lock                            serialises the short publish step of commits and deletes

A commit copies into .staging (same filesystem), renames the folder into .commits, then
replaces MANIFEST.json (tmp + fsync + os.replace). A crash at any point leaves either the old
manifest or the new one, each pointing at complete files.

A committed folder is never moved or deleted under a reader. `fetch` hands out the commit
folder itself, so the reader holds a shared flock on that folder for as long as it may read it
(until `release`, `close`, or the process exits); a re-commit or delete collects an older commit
only if it can take the exclusive lock at once, and leaves held ones for a later commit or
delete of the key to collect. flock, not a marker file: the kernel drops a dead reader's lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.folders import (
    COMMITS_DIR,
    MANIFEST_NAME,
    check_file_paths,
    check_key,
    copy_and_hash,
    file_lock,
    file_problem,
    is_key,
    list_files,
    manifest_bytes,
    move_into_place,
    new_commit_id,
    new_manifest,
    parse_manifest,
    progress,
    staging_dir_for,
    verify_folder,
    verify_sha256_default,
)
from xwin.artifacts.store import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    FileEntry,
    Manifest,
    RecordConflict,
    StoreUnavailable,
    VersionedRecord,
)
from xwin.core.clock import utc_now
from xwin.core.files import fsync_dir, write_bytes_atomically

log = logging.getLogger(__name__)

STALE_STAGING_S = 24 * 3600  # a staging folder this old belongs to a process that died
_READ_ONLY = 0o444
_FETCH_TRIES = 3  # a re-commit may collect the files of the manifest a reader just read
# Commit folders this process reads -> the descriptor holding each one's shared lock. Kept per
# process, not per store object: a folder stays held after the object that fetched it is gone
# (`open_store(config).fetch(key)`), until release() or the process exits.
_READING: dict[Path, int] = {}


class LocalStore(ArtifactStore):
    """Artifacts in a folder. `fetch(key)` returns the committed folder itself (no copy) after
    checking sizes, or sha256 too with verify_sha256 (default: $XWIN_VERIFY_SHA256)."""

    def __init__(self, config: StoreConfig, *, verify_sha256: bool | None = None):
        self.root = Path(config.root).expanduser().absolute()
        self.verify_sha256 = verify_sha256_default() if verify_sha256 is None else verify_sha256
        self._handed_out: set[Path] = set()

    # -- readers' locks on commit folders
    def release(self, folder: Path) -> None:
        """Done reading a folder `fetch` returned: a later commit of its key may collect it."""
        self._handed_out.discard(Path(folder))
        fd = _READING.pop(Path(folder), None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Release every folder this store object has handed out."""
        for folder in list(self._handed_out):
            self.release(folder)

    def _hold(self, folder: Path) -> bool:
        """Take a shared lock on a commit folder (True: newly taken, False: this process holds
        it already), or raise FileNotFoundError if it is gone (a writer collected it between our
        reading the manifest and locking it)."""
        if folder in _READING:
            return False
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            # the writer may have moved the folder to the trash while we waited for the lock
            held, now = os.fstat(fd), os.stat(folder)
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                raise FileNotFoundError(2, "collected while being opened", str(folder))
        except BaseException:
            os.close(fd)
            raise
        _READING[folder] = fd
        self._handed_out.add(folder)
        return True

    # -- paths
    def _key_dir(self, key: str) -> Path:
        return self.root / key

    def _manifest_path(self, key: str) -> Path:
        return self.root / key / MANIFEST_NAME

    def _commit_dir(self, key: str, commit_id: str) -> Path:
        return self.root / key / COMMITS_DIR / commit_id

    @property
    def _staging(self) -> Path:
        return self.root / ".staging"

    def _locked(self) -> AbstractContextManager[None]:
        return file_lock(self.root / ".lock")

    # -- writing
    def commit(
        self,
        key: str,
        local_dir: Path,
        *,
        producer: str,
        config_digest: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> Manifest:
        check_key(key)
        files = list_files(Path(local_dir))
        check_file_paths(key, [rel for rel, _ in files])
        self._staging.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging()
        commit_id = new_commit_id()
        stage = self._staging / commit_id
        stage.mkdir()
        published = None  # the commit folder once renamed out of staging
        try:
            draft = new_manifest(
                key,
                commit_id,
                [],
                producer=producer,
                config_digest=config_digest,
                metadata=metadata,
            )
            entries = self._copy_in(files, stage, key)
            manifest = draft.model_copy(update={"files": entries, "created_at": utc_now()})
            with self._locked():
                commits = self._key_dir(key) / COMMITS_DIR
                commits.mkdir(parents=True, exist_ok=True)
                published = commits / commit_id
                os.rename(stage, published)
                fsync_dir(commits)
                write_bytes_atomically(self._manifest_path(key), manifest_bytes(manifest))
                published = None  # the manifest owns it now
                garbage = self._collect_garbage(commits, keep=commit_id)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            if published is not None and not self._points_at(key, commit_id):
                shutil.rmtree(published, ignore_errors=True)
            raise
        for folder in garbage:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("committed %s (%d files, %d bytes)", key, len(entries), manifest.total_bytes)
        return manifest

    def _copy_in(self, files: list[tuple[str, Path]], stage: Path, key: str) -> list[FileEntry]:
        total = sum(path.stat().st_size for _, path in files)
        entries = []
        with progress(total, f"commit {key}") as on_bytes:
            for rel, src in files:
                dst = stage / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                size, sha256 = copy_and_hash(src, dst, on_bytes)
                # read-only, so a stage that writes into its input folder fails loudly instead
                # of silently changing a committed artifact
                os.chmod(dst, _READ_ONLY)
                entries.append(FileEntry(path=rel, size=size, sha256=sha256))
        return entries

    def _points_at(self, key: str, commit_id: str) -> bool:
        """Whether the manifest in place names this commit (a failure after os.replace must
        not delete the files of a published commit)."""
        try:
            current = self.manifest(key)
        except ArtifactError:
            return False
        return current is not None and current.commit_id == commit_id

    def _collect_garbage(self, commits: Path, *, keep: str) -> list[Path]:
        """Older commits of the key that no reader holds, moved out of the way; the commit
        stands even if this fails (leftovers are only disk space, removed by the next commit of
        the key)."""
        try:
            return self._move_to_trash([d for d in commits.iterdir() if d.name != keep])
        except OSError as e:
            log.warning("could not remove old commits in %s: %s", commits, e)
            return []

    def _move_to_trash(self, folders: list[Path]) -> list[Path]:
        """Rename the folders no reader holds into staging (fast, under the store's lock);
        deleting them can wait. A held folder stays where its reader finds it."""
        moved = []
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("%s is being read; it is collected by a later commit", folder)
                    continue
                trash = self._staging / f"trash-{new_commit_id()}"
                os.rename(folder, trash)
                moved.append(trash)
            finally:
                os.close(fd)
        return moved

    def _remove_stale_staging(self) -> None:
        """Staging folders left by processes that were killed mid-commit."""
        now = time.time()
        for folder in self._staging.iterdir():
            if folder.is_dir() and now - folder.stat().st_mtime > STALE_STAGING_S:
                log.info("removing stale staging folder %s", folder)
                shutil.rmtree(folder, ignore_errors=True)

    def delete(self, key: str) -> None:
        if not is_key(key):
            return
        with self._locked():
            self._manifest_path(key).unlink(missing_ok=True)
            commits = self._key_dir(key) / COMMITS_DIR
            garbage = self._move_to_trash(sorted(commits.iterdir())) if commits.exists() else []
            if commits.exists() and not any(commits.iterdir()):
                commits.rmdir()  # else a reader holds a commit: the next commit/delete collects it
            # drop now-empty folders up to the root, keeping any that hold other keys
            folder = self._key_dir(key)
            while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        for trash in garbage:
            shutil.rmtree(trash, ignore_errors=True)

    def put_record(self, key: str, data: bytes) -> None:
        check_key(key)
        write_bytes_atomically(self.root / ".records" / key, data)

    # Conditional writes: check and write under one flock, so two processes (or threads) on
    # this machine, or on a shared volume whose filesystem honours flock, never both win.
    def create_record(self, key: str, data: bytes) -> str:
        check_key(key)
        path = self.root / ".records" / key
        with file_lock(self.root / ".records" / ".lock"):
            if path.exists():
                raise RecordConflict(f"record {key} already exists in {self.root}")
            write_bytes_atomically(path, data)
        return record_version(data)

    def replace_record(self, key: str, data: bytes, *, version: str) -> str:
        check_key(key)
        path = self.root / ".records" / key
        with file_lock(self.root / ".records" / ".lock"):
            try:
                current = record_version(path.read_bytes())
            except (FileNotFoundError, NotADirectoryError):
                raise RecordConflict(f"record {key} is gone from {self.root}") from None
            if current != version:
                raise RecordConflict(f"record {key} in {self.root} changed since it was read")
            write_bytes_atomically(path, data)
        return record_version(data)

    def get_record_versioned(self, key: str) -> VersionedRecord | None:
        data = self.get_record(key)
        return None if data is None else VersionedRecord(data, record_version(data))

    def list_records(self, prefix: str) -> list[str]:
        base = self.root / ".records"
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / head if head and is_key(head) else base
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                key = (Path(dirpath) / name).relative_to(base).as_posix()
                # is_key drops the temporary files of atomic writes and the lock
                if is_key(key) and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    # -- reading
    def manifest(self, key: str) -> Manifest | None:
        # not a key (e.g. a local path a stage spec names as input): no artifact, not an error
        if not is_key(key):
            return None
        path = self._manifest_path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return parse_manifest(data, str(path), key)

    def fetch(self, key: str, dest: Path | None = None) -> Path:
        """The committed folder itself (dest None: read-only, held until release(folder),
        close() or the process's exit), or a verified copy in dest."""
        for _ in range(_FETCH_TRIES):
            manifest = self.manifest(key)
            if manifest is None:
                raise ArtifactNotFound(f"no committed artifact {key!r} in {self.root}")
            folder = self._commit_dir(key, manifest.commit_id)
            newly_held = False
            try:
                newly_held = self._hold(folder)  # no commit of the key collects it while we read
                if dest is None:
                    verify_folder(folder, manifest, full=self.verify_sha256)
                    return folder  # held until release(folder), close() or exit
                try:
                    return self._copy_out(folder, manifest, Path(dest))
                finally:
                    if newly_held:  # a copy needs the folder no longer
                        self.release(folder)
                        newly_held = False
            except (ArtifactCorrupt, FileNotFoundError) as e:
                if newly_held:
                    self.release(folder)
                current = self.manifest(key)
                if current is None or current.commit_id == manifest.commit_id:
                    if isinstance(e, FileNotFoundError):
                        raise ArtifactCorrupt(
                            f"artifact {key} (commit {manifest.commit_id}): {e.filename} is "
                            "listed in the manifest but missing"
                        ) from e
                    raise
                log.info("%s was re-committed while being read; reading the new commit", key)
        raise ArtifactError(f"{key!r} keeps being re-committed while it is read")

    def _copy_out(self, folder: Path, manifest: Manifest, dest: Path) -> Path:
        """Copy into a staging folder beside dest, checking every sha256, then move into dest."""
        staged = staging_dir_for(dest, manifest.commit_id)
        try:
            problems = []
            with progress(manifest.total_bytes, f"fetch {manifest.key}") as on_bytes:
                for entry in manifest.files:
                    target = staged / entry.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    copy_and_hash(folder / entry.path, target, on_bytes)
                    os.chmod(target, 0o644)
                    if problem := file_problem(target, entry, full=True):
                        problems.append(problem)
            if problems:
                raise ArtifactCorrupt(
                    f"artifact {manifest.key} (commit {manifest.commit_id}) in {self.root}: "
                    + "; ".join(problems)
                )
            move_into_place(staged, dest)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return dest

    def list(self, prefix: str = "") -> list[str]:
        start = self.root
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if head and is_key(head):  # walk only the folder the prefix names
            start = self.root / head
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if MANIFEST_NAME in filenames and dirpath != str(self.root):
                key = Path(dirpath).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def get_record(self, key: str) -> bytes | None:
        if not is_key(key):
            return None
        try:
            return (self.root / ".records" / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def check(self) -> None:
        try:
            self._staging.mkdir(parents=True, exist_ok=True)
            probe = self._staging / f"probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreUnavailable(f"local artifact store {self.root}: cannot write: {e}") from e


def record_version(data: bytes) -> str:
    """A local record's version: the digest of its bytes (what S3's ETag is for a plain PUT)."""
    return hashlib.sha256(data).hexdigest()[:32]
