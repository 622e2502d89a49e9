"""`python -m xwin.artifacts.bucket`: makes the run's bucket on a fresh S3 endpoint (moto's server
over real HTTP), waiting for a server that is still starting."""

from __future__ import annotations

import threading
import uuid

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from fixtures_s3 import REGION, aws_env, s3_server  # noqa: F401 (fixtures)

from xwin.artifacts.bucket import ensure_bucket, main
from xwin.core.net import free_port


def test_creates_the_bucket_once(s3_server, aws_env, capsys):  # noqa: F811
    name = f"xwin-{uuid.uuid4().hex[:10]}"
    assert main(["--endpoint", s3_server, "--bucket", name]) == 0
    assert capsys.readouterr().out.strip() == f"bucket {name}: created"
    assert ensure_bucket(s3_server, name) is False
    buckets = boto3.client("s3", endpoint_url=s3_server, region_name=REGION).list_buckets()
    assert name in [b["Name"] for b in buckets["Buckets"]]


def test_waits_for_a_server_that_is_still_starting(aws_env):  # noqa: F811
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    starter = threading.Timer(1.5, server.start)
    starter.start()
    try:
        assert ensure_bucket(f"http://127.0.0.1:{port}", "late", wait_s=60) is True
    finally:
        starter.join()
        server.stop()


def test_gives_up_on_an_endpoint_that_never_answers(aws_env):  # noqa: F811
    with pytest.raises(EndpointConnectionError):
        ensure_bucket(f"http://127.0.0.1:{free_port()}", "never", wait_s=1)
