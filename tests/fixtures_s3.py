"""Fixtures for artifact-store tests: a real HTTP S3 endpoint (moto's server on 127.0.0.1) that
boto3 talks to unchanged, a fresh bucket per test, a fault-injecting reverse proxy to put in
front of it, and a local store in a temporary folder.

Fixtures: s3_server (session: the endpoint URL), aws_env (dummy credentials, no AWS config
files, a private XWIN_CACHE_DIR), s3_bucket (a fresh bucket), s3_store_config (a StoreConfig for
it: 5 MB parts, 3 attempts), s3_fault_proxy (a FaultProxy in front of s3_server), local_store,
moto_atomic_puts (moto's conditional PUTs decided one at a time, as S3 decides them).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
import pytest

from xwin.artifacts.config import StoreConfig

REGION = "us-east-1"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",  # the proxy answers 100-continue itself
    "content-length",  # recomputed for the body actually sent
    "server",
    "date",
}
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 over real HTTP on 127.0.0.1 (a free port), for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path) -> None:
    """Dummy credentials from the environment only (no ~/.aws, no instance metadata), and a
    private download cache."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "XWIN_VERIFY_SHA256",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("XWIN_CACHE_DIR", str(tmp_path / "xwin-cache"))


@pytest.fixture
def s3_bucket(s3_server, aws_env) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"xwin-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name=REGION).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store_config(s3_server, s3_bucket) -> StoreConfig:
    """An S3 StoreConfig for the fresh bucket: 5 MB parts (S3's minimum), 3 attempts."""
    return StoreConfig(
        kind="s3",
        endpoint_url=s3_server,
        bucket=s3_bucket,
        prefix="xwin",
        region=REGION,
        max_attempts=3,
        multipart_chunk_mb=5,
    )


@pytest.fixture
def moto_atomic_puts(s3_server, monkeypatch) -> None:
    """moto checks a PUT's If-None-Match / If-Match and then stores the object without a lock,
    so two PUTs at once can both pass their check; S3 decides conditional writes to one key
    atomically (one 200, one 412). The server runs in this process: make its PUT handler take
    one lock, so concurrency tests see S3's behaviour, not that gap."""
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    put_object = S3Response.put_object

    def one_at_a_time(self, *args, **kwargs):
        with lock:
            return put_object(self, *args, **kwargs)

    monkeypatch.setattr(S3Response, "put_object", one_at_a_time)


@pytest.fixture
def local_store(tmp_path):
    """A LocalStore in a fresh folder."""
    from xwin.artifacts.local import LocalStore

    return LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))


@pytest.fixture
def s3_fault_proxy(s3_server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the moto server; point a StoreConfig at proxy.endpoint_url."""
    proxy = FaultProxy(s3_server)
    proxy.start()
    yield proxy
    proxy.stop()


@dataclass
class Fault:
    """Fail requests with this method whose path (with query) contains path_contains."""

    method: str
    path_contains: str = ""
    # "503": a SlowDown answer; "reset": drop the connection unanswered; "lose-answer": pass
    # the request on to S3 (it takes effect), then drop the connection before the answer
    action: str = "503"
    times: int | None = 1  # None: every matching request, for good
    hits: int = 0


class FaultProxy:
    """A reverse proxy to an S3 server that fails chosen requests on the wire, as a throttled or
    flaky S3 would: the client sees a real 503 SlowDown or a real TCP reset (see Fault)."""

    def __init__(self, upstream_url: str):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port)
        self.faults: list[Fault] = []
        # (method, path with query, Range header or "") of every request seen
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail(
        self, method: str, path_contains: str = "", action: str = "503", times: int | None = 1
    ) -> Fault:
        fault = Fault(method, path_contains, action, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take(self, method: str, path: str, range_: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path, range_))
            for fault in self.faults:
                wanted = fault.times is None or fault.hits < fault.times
                if wanted and fault.method == method and fault.path_contains in path:
                    fault.hits += 1
                    return fault
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue for botocore's uploads

    def log_message(self, format, *args):  # quiet test output
        pass

    def do_GET(self):
        self._forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        """Close with linger 0: a TCP RST, the client sees "connection reset"."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _forward(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()
        fault = proxy._take(self.command, self.path, self.headers.get("Range", ""))
        if fault is not None and fault.action == "reset":
            self._reset()
            return
        if fault is not None and fault.action == "503":
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(_SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        if fault is not None:  # lose-answer
            self._reset()
            return
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        length = answer.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


@contextmanager
def moto_checks_credentials(endpoint_url: str) -> Iterator[None]:
    """Make the moto server check every request's credentials against its IAM (it accepts
    anything by default), then stop checking again."""

    def set_count(value: bytes) -> None:
        request = urllib.request.Request(  # text/plain: a form body would read as empty
            f"{endpoint_url}/moto-api/reset-auth",
            data=value,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).read()

    set_count(b"0")
    try:
        yield
    finally:
        set_count(b"inf")
