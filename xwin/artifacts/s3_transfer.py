"""Moving files to and from S3: the boto3 client, multipart uploads and ranged downloads
(s3transfer), a few files at a time, each file retried as a whole, the first file that fails
for good cancelling the rest, and one progress bar for the lot."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config as BotoConfig
from botocore.loaders import Loader, create_loader
from s3transfer.subscribers import BaseSubscriber

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.folders import progress

FILE_WORKERS = 4  # files in flight at once
REQUEST_THREADS = 8  # S3 requests in flight at once (parts of all those files)

TransferJob = tuple[Path, str, int]  # local path, object key, size
RetryingCall = Callable[..., Any]  # (what, fn) -> fn() under the store's retry policy

_loader_lock = threading.Lock()
_loader: Loader | None = None


def new_client(config: StoreConfig) -> Any:
    """An S3 client for the config: botocore's own retries off (the store's policy counts every
    attempt), path-style addressing for custom endpoints (MinIO and most S3-compatibles)."""
    botocore_config = BotoConfig(
        retries={"total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=REQUEST_THREADS + FILE_WORKERS,
        s3={"addressing_style": "path"} if config.endpoint_url else None,
    )
    return _new_session(config.region).client(
        "s3", endpoint_url=config.endpoint_url, config=botocore_config
    )


def _new_session(region: str | None) -> boto3.session.Session:
    """A fresh session (credentials are read from the environment now) sharing one model
    loader per process: parsing botocore's S3 model for each session costs 0.1-0.3 s."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = create_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core, region_name=region)


def new_transfer_config(config: StoreConfig) -> TransferConfig:
    chunk = config.multipart_chunk_mb * 2**20
    return TransferConfig(
        multipart_threshold=chunk,
        multipart_chunksize=chunk,
        max_concurrency=REQUEST_THREADS,
        num_download_attempts=1,  # the store's policy retries, not s3transfer
        preferred_transfer_client="classic",  # the CRT client would bypass our client
    )


def transfer_files(
    client: Any,
    transfer_config: TransferConfig,
    bucket: str,
    jobs: list[TransferJob],
    *,
    upload: bool,
    desc: str,
    call: RetryingCall,
) -> None:
    """Upload (or download) every job; `call(what, fn)` runs one attempt-able file transfer
    under the store's retry policy. Raises the first failure, after cancelling the rest."""
    batch = _Batch()
    verb = "uploading" if upload else "downloading"
    total = sum(size for _, _, size in jobs)
    with (
        create_transfer_manager(client, transfer_config) as manager,
        progress(total, desc) as on_bytes,
        ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="xwin-s3") as pool,
    ):

        def transfer(path: Path, obj: str) -> None:
            counter = _Progress(on_bytes)
            try:
                if upload:
                    batch.run(lambda: manager.upload(str(path), bucket, obj, subscribers=[counter]))
                else:
                    batch.run(
                        lambda: manager.download(bucket, obj, str(path), subscribers=[counter])
                    )
            except BaseException:
                on_bytes(-counter.sent)  # the next attempt starts this file over
                raise

        futures = [
            pool.submit(call, f"{verb} s3://{bucket}/{obj}", transfer, path, obj)
            for path, obj, _ in jobs
        ]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            batch.cancel()
            for future in futures:
                future.cancel()
            raise


class _Cancelled(Exception):
    """Another file of the same transfer failed for good; this one stops."""


class _Batch:
    """The live s3transfer futures of one commit or fetch, so that the first file that fails
    for good can cancel the others instead of letting them run to the end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[Any] = set()
        self._cancelled = False

    def run(self, start: Callable[[], Any]) -> None:
        with self._lock:
            if self._cancelled:
                raise _Cancelled()
            future = start()
            self._live.add(future)
        try:
            future.result()
        finally:
            with self._lock:
                self._live.discard(future)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            for future in self._live:
                future.cancel()


class _Progress(BaseSubscriber):
    """Counts one attempt's bytes (to roll the bar back if it fails) and feeds the bar."""

    def __init__(self, on_bytes: Callable[[int], None]):
        self.on_bytes = on_bytes
        self.sent = 0
        self._lock = threading.Lock()

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        with self._lock:
            self.sent += bytes_transferred
        self.on_bytes(bytes_transferred)
