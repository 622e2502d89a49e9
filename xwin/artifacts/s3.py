"""The artifact store in an S3 bucket (AWS S3, MinIO, moto), through boto3.

Layout under s3://<bucket>/<prefix>/:

    <key>/MANIFEST.json              the committed manifest (one PUT: atomic for readers)
    <key>/.commits/<commit_id>/...   that commit's files
    .records/<key>                   small mutable records; leases and the run index are written
                                     with conditional PUTs (If-None-Match: *, If-Match: <ETag>)

A commit hashes the folder, uploads every file under a new commit id, then PUTs the manifest;
until that last PUT nothing is visible, and a failed upload removes what it sent. Large files go
as multipart uploads and ranged downloads (parts of `multipart_chunk_mb`). Credentials come
from the standard AWS chain (environment, profile, web identity) only.

Attempts: botocore's retries are off, so `config.max_attempts` counts every attempt of each S3
call and of each file transfer (tenacity, exponential backoff: s3_errors). A multipart upload
that loses a part is aborted by s3transfer and that one file is sent again whole (s3_transfer).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.folders import (
    COMMITS_DIR,
    MANIFEST_NAME,
    cache_root,
    check_key,
    file_lock,
    folder_problems,
    is_key,
    is_stale,
    manifest_bytes,
    move_into_place,
    new_commit_id,
    new_manifest,
    parse_manifest,
    scan_folder,
    staging_dir_for,
    verify_folder,
    verify_sha256_default,
)
from xwin.artifacts.s3_errors import (
    describe_endpoint,
    error_code,
    is_not_found,
    retrying,
    store_error,
)
from xwin.artifacts.s3_transfer import (
    TransferJob,
    new_client,
    new_transfer_config,
    transfer_files,
)
from xwin.artifacts.store import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    Manifest,
    RecordConflict,
    StoreUnavailable,
    VersionedRecord,
)
from xwin.core.clock import utc_now
from xwin.core.errors import ConfigError

log = logging.getLogger(__name__)

STALE_COMMIT_S = 24 * 3600  # an unpublished commit this old belongs to a process that died
_FETCH_TRIES = 3  # a re-commit may collect the files of the manifest a reader just read


class S3Store(ArtifactStore):
    """Artifacts in S3. `fetch(key)` downloads into $XWIN_CACHE_DIR/artifacts/<commit_id> (else
    ~/.cache/xwin/...) and reuses that folder once complete. `client` is the boto3 client: hook
    request events (metrics, tests) on `client.meta.events`."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        verify_sha256: bool | None = None,
        cache_dir: Path | None = None,
    ):
        if not config.bucket:
            raise ConfigError("store.bucket: required when store.kind is 's3'")
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix.strip("/")
        self.endpoint = describe_endpoint(config.endpoint_url, config.region)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.verify_sha256 = verify_sha256_default() if verify_sha256 is None else verify_sha256
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self.client = new_client(config)
        self.transfer_config = new_transfer_config(config)

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir or cache_root() / "artifacts"

    def _obj(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def _commit_prefix(self, key: str, commit_id: str) -> str:
        return self._obj(key, COMMITS_DIR, commit_id) + "/"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn under the retry policy; store-level failures become StoreUnavailable."""
        attempts = kwargs.pop("attempts", None) or self.config.max_attempts
        policy = retrying(what, attempts, self.backoff_s, self.max_backoff_s)
        try:
            return policy(fn, *args, **kwargs)
        except Exception as e:
            error = store_error(
                e, what=what, endpoint=self.endpoint, bucket=self.bucket, attempts=attempts
            )
            if error is None:
                raise
            raise error from e

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
        files = scan_folder(Path(local_dir), key)
        commit_id = new_commit_id()
        manifest = new_manifest(
            key,
            commit_id,
            [entry for entry, _ in files],
            producer=producer,
            config_digest=config_digest,
            metadata=metadata,
        )
        prefix = self._commit_prefix(key, commit_id)
        jobs = [(path, prefix + entry.path, entry.size) for entry, path in files]
        try:
            self._transfer_all(jobs, upload=True, desc=f"upload {key}")
        except BaseException:
            self._delete_quietly(prefix)
            raise
        manifest = manifest.model_copy(update={"created_at": utc_now()})
        previous = self._current_or_none(key)
        self._publish(manifest, prefix)
        self._collect_garbage(key, keep=commit_id, previous=previous)
        log.info("committed %s (%d files, %d bytes)", key, len(files), manifest.total_bytes)
        return manifest

    def _publish(self, manifest: Manifest, prefix: str) -> None:
        """PUT the manifest: the one step that makes the commit visible."""
        key = manifest.key
        try:
            self._call(
                f"writing the manifest of {key}",
                self.client.put_object,
                Bucket=self.bucket,
                Key=self._obj(key, MANIFEST_NAME),
                Body=manifest_bytes(manifest),
                ContentType="application/json",
            )
        except BaseException:
            # the PUT may have landed although its answer was lost: look before cleaning up
            landed = self._has_commit(key, manifest.commit_id)
            if landed:
                return
            if landed is False:  # (None: cannot tell; the files stay until garbage collection)
                self._delete_quietly(prefix)
            raise

    def _current_or_none(self, key: str) -> Manifest | None:
        """The manifest about to be replaced, for garbage collection; if it cannot be read,
        its files are collected a day later instead of now."""
        try:
            return self.manifest(key)
        except ArtifactError:
            return None

    def _has_commit(self, key: str, commit_id: str) -> bool | None:
        try:
            current = self.manifest(key)
        except Exception:  # noqa: BLE001 - any failure here means "cannot tell"
            return None
        return current is not None and current.commit_id == commit_id

    def _collect_garbage(self, key: str, *, keep: str, previous: Manifest | None) -> None:
        """Remove the replaced commit, and commits nobody published that are a day old."""
        try:
            ids = self._commit_ids(key)
            for commit_id in ids:
                replaced = previous is not None and commit_id == previous.commit_id
                if commit_id != keep and (replaced or is_stale(commit_id, STALE_COMMIT_S)):
                    self._delete_prefix(self._commit_prefix(key, commit_id))
        except Exception as e:  # noqa: BLE001 - the commit succeeded; leftovers are storage
            log.warning("could not remove old files of %s: %s", key, e)

    def _commit_ids(self, key: str) -> list[str]:
        base = self._obj(key, COMMITS_DIR) + "/"

        def scan() -> list[str]:
            ids = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    ids.append(common["Prefix"][len(base) :].strip("/"))
            return ids

        return self._call(f"listing the commits of {key}", scan)

    def delete(self, key: str) -> None:
        if not is_key(key):
            return
        self._call(
            f"deleting {key}",
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self._obj(key, MANIFEST_NAME),
        )
        self._delete_prefix(self._obj(key, COMMITS_DIR) + "/")

    def _delete_prefix(self, prefix: str, attempts: int | None = None) -> None:
        def run() -> None:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if not objects:
                    continue
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                if errors := answer.get("Errors"):
                    raise ArtifactError(f"could not delete {errors[0].get('Key')}: {errors[0]}")

        self._call(f"deleting {prefix}", run, attempts=attempts)

    def _delete_quietly(self, prefix: str) -> None:
        """Best effort after a failure: never hides the error being raised."""
        try:
            self._delete_prefix(prefix, attempts=min(2, self.config.max_attempts))
        except Exception as e:  # noqa: BLE001 - must not hide the error being raised
            log.warning(
                "could not remove the unpublished upload %s (%s); readers never see it and the "
                "next commit of the key removes it after a day",
                prefix,
                e,
            )

    def put_record(self, key: str, data: bytes) -> None:
        check_key(key)
        self._call(
            f"writing record {key}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._obj(".records", key),
            Body=data,
        )

    def create_record(self, key: str, data: bytes) -> str:
        check_key(key)
        return self._put_conditional(key, data, IfNoneMatch="*")

    def replace_record(self, key: str, data: bytes, *, version: str) -> str:
        check_key(key)
        return self._put_conditional(key, data, IfMatch=version)

    def _put_conditional(self, key: str, data: bytes, **condition: str) -> str:
        """One conditional PUT. A retried PUT whose first answer was lost finds its own write in
        place and gets 412: the bytes it reads back are its own (writers make every write's
        bytes unique), so that is a win, not a conflict."""
        obj = self._obj(".records", key)
        try:
            answer = self._call(f"writing record {key}", self.client.put_object,
                                Bucket=self.bucket, Key=obj, Body=data, **condition)
        except ClientError as e:
            # 412: the condition failed; 409: another conditional write to the key was in
            # flight; 404 (If-Match on a record that is gone)
            if error_code(e) not in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                     "409") and not is_not_found(e):
                raise
            current = self.get_record_versioned(key)
            if current is not None and current.data == data:
                return current.version
            raise RecordConflict(
                f"record s3://{self.bucket}/{obj}: another writer changed it first "
                f"({error_code(e)})") from e
        return answer["ETag"]

    def get_record_versioned(self, key: str) -> VersionedRecord | None:
        if not is_key(key):
            return None
        obj = self._obj(".records", key)

        def get() -> VersionedRecord | None:
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=obj)
            except ClientError as e:
                if is_not_found(e):
                    return None
                raise
            return VersionedRecord(answer["Body"].read(), answer["ETag"])

        return self._call(f"reading record {key}", get)

    def list_records(self, prefix: str) -> list[str]:
        base = self._obj(".records") + "/"

        def scan() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix)
            keys = [obj["Key"][len(base):] for page in pages for obj in page.get("Contents", [])]
            return sorted(k for k in keys if is_key(k))

        return self._call(f"listing records {prefix!r}", scan)

    # -- reading
    def _get_bytes(self, what: str, obj: str) -> bytes | None:
        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=obj)["Body"].read()
            except ClientError as e:
                if is_not_found(e):
                    return None
                raise

        return self._call(what, get)

    def manifest(self, key: str) -> Manifest | None:
        # not a key (e.g. a local path a stage spec names as input): no artifact, not an error
        if not is_key(key):
            return None
        obj = self._obj(key, MANIFEST_NAME)
        data = self._get_bytes(f"reading the manifest of {key}", obj)
        return None if data is None else parse_manifest(data, f"s3://{self.bucket}/{obj}", key)

    def get_record(self, key: str) -> bytes | None:
        if not is_key(key):
            return None
        return self._get_bytes(f"reading record {key}", self._obj(".records", key))

    def list(self, prefix: str = "") -> list[str]:
        base = self._obj() + "/" if self.prefix else ""
        suffix = "/" + MANIFEST_NAME

        def scan() -> list[str]:
            keys = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(base) :]
                    key = rel[: -len(suffix)]
                    # is_key drops files named MANIFEST.json inside .commits/ and .records/
                    if rel.endswith(suffix) and is_key(key) and key.startswith(prefix):
                        keys.append(key)
            return sorted(keys)

        return self._call(f"listing {prefix!r}", scan)

    def fetch(self, key: str, dest: Path | None = None) -> Path:
        for _ in range(_FETCH_TRIES):
            manifest = self.manifest(key)
            if manifest is None:
                raise ArtifactNotFound(
                    f"no committed artifact {key!r} in s3://{self.bucket}/{self.prefix} at "
                    f"{self.endpoint}"
                )
            try:
                return self._fetch_commit(manifest, dest)
            except ClientError as e:
                if not is_not_found(e):
                    raise
                current = self.manifest(key)
                if current is None or current.commit_id == manifest.commit_id:
                    raise ArtifactCorrupt(
                        f"artifact {key} (commit {manifest.commit_id}): a file its manifest lists "
                        f"is missing from s3://{self.bucket}/{self.prefix}"
                    ) from e
                log.info("%s was re-committed while being read; reading the new commit", key)
        raise ArtifactError(f"{key!r} keeps being re-committed while it is read")

    def _fetch_commit(self, manifest: Manifest, dest: Path | None) -> Path:
        if dest is not None:
            return self._download(manifest, Path(dest))
        cached = self.cache_dir / manifest.commit_id
        # the ranks of a multi-GPU node fetch the same model at once: one downloads, the others
        # wait for it and then find the cache complete
        with file_lock(self.cache_dir / f".{manifest.commit_id}.lock"):
            if cached.is_dir():
                problems = folder_problems(cached, manifest, full=self.verify_sha256)
                if not problems:
                    return cached
                log.warning("cached %s is damaged (%s); downloading again", cached, problems[0])
                shutil.rmtree(cached, ignore_errors=True)
            return self._download(manifest, cached)

    def _download(self, manifest: Manifest, target: Path) -> Path:
        """Download into a folder beside target, check every size and sha256, then move."""
        staged = staging_dir_for(target, manifest.commit_id)
        try:
            prefix = self._commit_prefix(manifest.key, manifest.commit_id)
            jobs = [(staged / e.path, prefix + e.path, e.size) for e in manifest.files]
            for path, _, _ in jobs:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._transfer_all(jobs, upload=False, desc=f"download {manifest.key}")
            verify_folder(staged, manifest, full=True)
            move_into_place(staged, target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return target

    def _transfer_all(self, jobs: list[TransferJob], *, upload: bool, desc: str) -> None:
        transfer_files(
            self.client,
            self.transfer_config,
            self.bucket,
            jobs,
            upload=upload,
            desc=desc,
            call=self._call,
        )

    def check(self) -> None:
        try:
            self._call(
                f"checking bucket {self.bucket}", self.client.head_bucket, Bucket=self.bucket
            )
        except ClientError as e:
            if error_code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise StoreUnavailable(
                    f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}; create it or "
                    "fix store.bucket"
                ) from e
            raise
