"""The controller's life on a cluster, end to end: `xwin run` as a real subprocess with the
Kubernetes executor against the in-process API server (kube_api_server.py) and an S3 store on
moto's HTTP server. SIGTERM detaches and leaves the stage Job running; a second controller with
the same run id and a fresh workdir (a replaced pod's emptyDir) resumes from the store and
adopts the Job; a store outage is waited out, or given up after the patience, saying why."""

from __future__ import annotations

import shutil
import signal
import socket
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from fixtures_s3 import FaultProxy
from kube_api_server import FakeKubeAPI
from pipeline_helpers import REPO, explain, start_xwin, wait_for, xwin

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.controller.state import RunRecord, RunStore
from xwin.core.errors import EXIT_DETACHED, EXIT_FAILED, EXIT_OK
from xwin.executors.kubernetes.naming import job_name

NS = "xwin"


@pytest.fixture
def api(tmp_path, monkeypatch):
    """The fake API server, named by a kubeconfig in the environment the subprocesses inherit."""
    server = FakeKubeAPI()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.delenv("XWIN_RUN_ID", raising=False)
    yield server
    server.close()


class RestartableS3:
    """moto's S3 server on a fixed port, which a test stops and starts again, behind a proxy
    that passes every request on over a new connection (fixtures_s3.FaultProxy, no faults
    set): the controller's pooled keep-alive connections end at the proxy, so while the server
    is stopped every request fails, as in an S3 outage. moto keeps its buckets in this
    process: the data survives the restart, as a real outage leaves it."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = None
        self.start()
        self.proxy = FaultProxy(f"http://127.0.0.1:{self.port}")
        self.proxy.start()
        self.url = self.proxy.endpoint_url

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            # stop() leaves the socket listening (connections accepted, never answered)
            self.server._server.server_close()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.proxy.stop()


@pytest.fixture
def s3(aws_env):
    server = RestartableS3()
    server.bucket = f"life-{uuid.uuid4().hex[:12]}"  # moto's buckets outlive a test
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=server.bucket)
    yield server
    server.close()


def cluster_config(tmp_path: Path, s3: RestartableS3, **run) -> tuple[Path, StoreConfig]:
    """A run of the prepare stage alone, as a Job in the fake cluster."""
    store = StoreConfig(kind="s3", endpoint_url=s3.url, bucket=s3.bucket, prefix="xwin",
                        region="us-east-1", max_attempts=2)
    config = {
        "run": {"name": "life", "workdir": str(tmp_path / "work"), "only": ["prepare"],
                "retry_backoff_s": 0.1, **run},
        "store": store.model_dump(mode="json", exclude_defaults=True),
        "executor": {"kind": "kubernetes", "namespace": NS, "profiles_dir": str(REPO / "jobs"),
                     "kubernetes": {"watch_timeout_s": 1}},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, store


def mirror(tmp_path: Path, run_id: str) -> RunRecord:
    return RunRecord.model_validate_json((tmp_path / "work" / "runs" / run_id / "state.json").read_bytes())


def job_ready(api: FakeKubeAPI, name: str) -> bool:
    return (api.get("jobs", NS, name) or {}).get("status", {}).get("ready") == 1


def commit_output(store_config: StoreConfig, key: str, tmp_path: Path) -> None:
    """What the stage's pod does before it exits 0: commit its artifact."""
    out = tmp_path / "stage-out"
    out.mkdir(exist_ok=True)
    (out / "data.txt").write_text("prepared\n")
    open_store(store_config).commit(key, out, producer="prepare")


def test_sigterm_detaches_and_a_fresh_controller_adopts_the_job(api, s3, tmp_path):
    config, store_config = cluster_config(tmp_path, s3)
    api.scripts["prepare"] = "hang"
    name = job_name("life-1", "prepare", 1)

    # 1. The first controller starts the stage Job; SIGTERM (a drain) detaches it.
    first = start_xwin("run", str(config), "--run-id", "life-1", cwd=tmp_path, log=tmp_path / "1.log")
    wait_for(lambda: job_ready(api, name), 120, "the prepare Job running", first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == EXIT_DETACHED, (tmp_path / "1.log").read_text()

    assert api.get("jobs", NS, name) is not None and api.deletes == []  # the Job runs on
    record = RunStore(open_store(store_config), tmp_path / "work").load("life-1")
    assert record.status == "detached"
    assert record.stages["prepare"].status == "detached"
    assert record.stages["prepare"].attempts[-1].status == "running"
    status = xwin("status", "life-1", "--config", str(config), cwd=tmp_path, timeout=120)
    assert status.returncode == 0, explain(status)
    shown = " ".join(status.stdout.split())  # as read, whatever the console wrapped
    assert "detached: no controller is watching; stage Jobs of prepare are still running" in shown
    assert "`xwin resume life-1`" in shown and "`xwin cancel life-1` deletes them" in shown

    # 2. A replaced pod: a fresh workdir, the same run id. It resumes from the store alone.
    shutil.rmtree(tmp_path / "work")
    watches = len(api.watch_requests())
    second = start_xwin("run", str(config), "--run-id", "life-1", cwd=tmp_path, log=tmp_path / "2.log")
    wait_for(lambda: len(api.watch_requests()) > watches, 120, "the Job followed again", second)
    commit_output(store_config, record.stages["prepare"].key, tmp_path)
    api.complete_job(name)
    assert second.wait(timeout=120) == EXIT_OK, (tmp_path / "2.log").read_text()

    log = (tmp_path / "2.log").read_text()
    assert "run life-1 exists (detached); resuming it" in log
    assert api.count("POST", "jobs") == 1  # adopted, never created twice
    record = RunStore(open_store(store_config), tmp_path / "work").load("life-1")
    assert record.status == "succeeded"
    assert [a.status for a in record.stages["prepare"].attempts] == ["succeeded"]


def test_cancel_deletes_the_jobs_of_a_detached_run(api, s3, tmp_path):
    config, store_config = cluster_config(tmp_path, s3)
    api.scripts["prepare"] = "hang"
    name = job_name("life-2", "prepare", 1)
    first = start_xwin("run", str(config), "--run-id", "life-2", cwd=tmp_path, log=tmp_path / "1.log")
    wait_for(lambda: job_ready(api, name), 120, "the prepare Job running", first)
    first.send_signal(signal.SIGINT)  # Ctrl-C detaches too
    assert first.wait(timeout=60) == EXIT_DETACHED, (tmp_path / "1.log").read_text()
    assert api.get("jobs", NS, name) is not None

    done = xwin("cancel", "life-2", "--config", str(config), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, explain(done)
    assert ("jobs", name, "Foreground") in api.deletes
    wait_for(lambda: api.get("jobs", NS, name) is None, 10, "the Job deleted")
    record = RunStore(open_store(store_config), tmp_path / "work").load("life-2")
    assert record.status == "cancelled" and record.stages["prepare"].status == "cancelled"
    # A controller pod that the Job starts again after the cancel starts nothing.
    again = xwin("run", str(config), "--run-id", "life-2", cwd=tmp_path, timeout=120)
    assert again.returncode == 2, explain(again)
    assert "run life-2 was cancelled" in again.stderr
    assert api.count("POST", "jobs") == 1


def test_a_store_outage_is_waited_out_and_the_run_goes_on(api, s3, tmp_path):
    config, store_config = cluster_config(tmp_path, s3, outage_backoff_max_s=1, outage_patience_s=120)
    api.scripts["prepare"] = "hang"
    name = job_name("life-3", "prepare", 1)
    run = start_xwin("run", str(config), "--run-id", "life-3", cwd=tmp_path, log=tmp_path / "run.log")
    wait_for(lambda: job_ready(api, name), 120, "the prepare Job running", run)
    commit_output(store_config, mirror(tmp_path, "life-3").stages["prepare"].key, tmp_path)

    s3.stop()  # S3 goes away while the stage finishes: the controller cannot check its output
    api.complete_job(name)
    waiting = wait_for(lambda: mirror(tmp_path, "life-3").waiting, 60, "the record to say it waits", run)
    assert waiting.startswith("S3 unreachable since 20") and "cannot reach S3" in waiting
    status = xwin("status", "life-3", "--workdir", str(tmp_path / "work"), cwd=tmp_path, timeout=120)
    assert status.returncode == 0, explain(status)
    assert "waiting: S3 unreachable since" in " ".join(status.stdout.split())

    s3.start()
    assert run.wait(timeout=120) == EXIT_OK, (tmp_path / "run.log").read_text()
    record = RunStore(open_store(store_config), tmp_path / "work").load("life-3")
    assert record.status == "succeeded" and record.waiting is None
    assert record.stages["prepare"].status == "succeeded"
    assert api.count("POST", "jobs") == 1


def test_past_its_patience_a_store_outage_fails_the_run_and_a_new_controller_continues(
        api, s3, tmp_path):
    config, store_config = cluster_config(tmp_path, s3, outage_backoff_max_s=0.5, outage_patience_s=3)
    api.scripts["prepare"] = "hang"
    name = job_name("life-4", "prepare", 1)
    run = start_xwin("run", str(config), "--run-id", "life-4", cwd=tmp_path, log=tmp_path / "run.log")
    wait_for(lambda: job_ready(api, name), 120, "the prepare Job running", run)
    commit_output(store_config, mirror(tmp_path, "life-4").stages["prepare"].key, tmp_path)

    s3.stop()
    api.complete_job(name)
    assert run.wait(timeout=120) == EXIT_FAILED, (tmp_path / "run.log").read_text()
    record = mirror(tmp_path, "life-4")  # the store is still down: the local copy says why
    assert record.status == "failed" and record.waiting is None
    assert record.error.startswith("S3 unreachable for ")
    assert record.error.endswith("`xwin resume life-4` continues")

    # The replaced controller pod starts while S3 is still down: it waits instead of failing.
    again = start_xwin("run", str(config), "--run-id", "life-4", cwd=tmp_path, log=tmp_path / "again.log")
    wait_for(lambda: "waiting: S3 unreachable since" in (tmp_path / "again.log").read_text(), 60,
             "the new controller to wait for S3", again)
    s3.start()
    assert again.wait(timeout=120) == EXIT_OK, (tmp_path / "again.log").read_text()
    assert "run life-4 exists (running); resuming it" in (tmp_path / "again.log").read_text()
    record = RunStore(open_store(store_config), tmp_path / "work").load("life-4")
    assert record.status == "succeeded"
    assert api.count("POST", "jobs") == 1
