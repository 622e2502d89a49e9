"""The artifact store's interface: folders (models, datasets, reports) made visible by one manifest written
last. An artifact without its manifest does not exist for readers, so a crash mid-upload never
leaves something half-written that a later stage could trust."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from xwin.core.errors import UserError


class ArtifactError(RuntimeError):
    """Base of the store's errors."""


class ArtifactNotFound(ArtifactError):
    """No committed artifact (no manifest) at that key."""


class ArtifactCorrupt(ArtifactError):
    """A downloaded file's size or sha256 differs from its manifest."""


class UnsafeManifest(ArtifactCorrupt, UserError):
    """A manifest whose key, commit id or file paths the store would never write (paths that
    climb out with `..`, absolute ones, a commit id naming another folder): crafted or damaged,
    so it is refused before anything is written or deleted, and a retry cannot help."""


class StoreUnavailable(ArtifactError):
    """The store cannot be used: missing bucket, bad credentials, unreachable endpoint."""


class StoreUnreachable(StoreUnavailable):
    """The endpoint did not answer, or kept failing, through every attempt: an outage that
    may end by itself (unlike a missing bucket or refused credentials)."""


class InvalidKey(ArtifactError, UserError):
    """A key that cannot name an artifact (empty segment, leading dot, odd characters)."""


class RecordConflict(ArtifactError):
    """A conditional record write lost: the record already exists (create) or is no longer the
    version the writer read (replace). Someone else wrote first; read the record again."""


class VersionedRecord(NamedTuple):
    """A record's bytes and the version a conditional replace must name: the S3 ETag, or the
    local store's digest of the bytes (the same idea: it changes whenever the bytes do)."""

    data: bytes
    version: str


class FileEntry(BaseModel):
    path: str  # relative, POSIX separators
    size: int
    sha256: str


class Manifest(BaseModel):
    key: str
    commit_id: str  # unique per commit; the files of this commit live under it
    producer: str  # stage name (or "import", "user")
    config_digest: str = ""
    created_at: str  # ISO 8601 UTC
    files: list[FileEntry]
    metadata: dict[str, Any] = Field(default_factory=dict)  # metrics, counts, input keys

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class ArtifactStore(ABC):
    """One interface, two backends (local folder, S3)."""

    @abstractmethod
    def commit(
        self,
        key: str,
        local_dir: Path,
        *,
        producer: str,
        config_digest: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> Manifest:
        """Upload every file under local_dir, then write the manifest last (atomically).
        Committing a key again replaces the artifact as one step for readers."""

    @abstractmethod
    def manifest(self, key: str) -> Manifest | None:
        """The committed manifest, or None."""

    def exists(self, key: str) -> bool:
        return self.manifest(key) is not None

    @abstractmethod
    def fetch(self, key: str, dest: Path | None = None) -> Path:
        """A local folder holding the committed files, every file checked against the manifest
        (ArtifactCorrupt otherwise). dest=None: a cache folder chosen by the store (the local
        backend may return the committed folder itself). Raises ArtifactNotFound."""

    def release(self, folder: Path) -> None:
        """Done reading a folder `fetch(key)` returned: the local backend, which hands out the
        committed folder itself, stops holding it from being collected. Others: nothing."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of committed artifacts under prefix, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the manifest first (the artifact disappears at once), then the files."""

    def check(self) -> None:
        """Fail fast with StoreUnavailable (naming the bucket or folder) if the store cannot be
        used, before a stage spends hours on work it could not commit."""

    @abstractmethod
    def put_record(self, key: str, data: bytes) -> None:
        """A small mutable object (run records, checkpoints' pointers), replaced atomically."""

    @abstractmethod
    def get_record(self, key: str) -> bytes | None:
        """The record's bytes, or None if never written."""

    # -- records written only if no one else wrote first: leases, run ids, the run index
    @abstractmethod
    def get_record_versioned(self, key: str) -> VersionedRecord | None:
        """The record's bytes with its version, or None if never written."""

    @abstractmethod
    def create_record(self, key: str, data: bytes) -> str:
        """Write the record only if it does not exist (S3 `If-None-Match: *`); its new version.
        RecordConflict if it exists: of two writers at once, exactly one wins."""

    @abstractmethod
    def replace_record(self, key: str, data: bytes, *, version: str) -> str:
        """Replace the record only if it is still at `version` (S3 `If-Match`); its new version.
        RecordConflict if it changed or is gone. Writers must make every write's bytes differ
        (a timestamp, a token), since the version is derived from the bytes."""

    @abstractmethod
    def list_records(self, prefix: str) -> list[str]:
        """Keys of the records under `prefix` (a folder: `runs-index/`), sorted."""
