"""The Kubernetes executor end to end through the official client, over HTTP, against a server
that speaks the Kubernetes API (kube_api_server.py): no client call is patched."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml
from kube_api_server import FakeKubeAPI
from kubernetes import client as k8s

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.stage_io import StageSpec
from xwin.config import ExecutorConfig
from xwin.executors.base import StageJob
from xwin.executors.kubernetes.executor import KubernetesExecutor
from xwin.executors.kubernetes.naming import job_name
from xwin.executors.kubernetes.render import render_stage
from xwin.executors.kubernetes.settings import KubernetesConfig
from xwin.executors.profiles import load_profiles

JOBS = Path(__file__).resolve().parents[2] / "jobs"
NS = "xwin"
S3 = StoreConfig(kind="s3", bucket="xwin-test", endpoint_url="http://minio:9000")
SETTINGS = KubernetesConfig(watch_timeout_s=1, image_pull_grace_s=0.3, unschedulable_timeout_s=0.3)


@pytest.fixture
def api():
    server = FakeKubeAPI()
    yield server
    server.close()


def client_for(api: FakeKubeAPI) -> k8s.ApiClient:
    return k8s.ApiClient(k8s.Configuration(host=api.url))


@pytest.fixture
def executor(api):
    return KubernetesExecutor(NS, SETTINGS, api_client=client_for(api))


def stage_job(stage: str, tmp_path: Path, run_id: str = "r1", attempt: int = 1, **profile) -> StageJob:
    profiles = load_profiles(JOBS, {stage: profile} if profile else None)
    spec = StageSpec(stage=stage, run_id=run_id, store=S3, output=f"{stage}/abc",
                     shards=profiles[stage].shards)
    return StageJob(run_id=run_id, stage=stage, attempt=attempt, spec=spec,
                    profile=profiles[stage], log_dir=tmp_path / "logs")


def in_thread(fn, *args):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn(*args)), daemon=True)
    thread.start()
    return thread, box


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_training_gang_succeeds_with_owned_objects_and_every_rank_log(api, executor, tmp_path):
    job = stage_job("sft", tmp_path, nodes=2)
    result = executor.run(job)

    assert result.status == "succeeded" and result.exit_code == 0
    name = job_name("r1", "sft", 1)
    created = api.get("jobs", NS, name)
    assert created["spec"]["completions"] == created["spec"]["parallelism"] == 2
    assert created["spec"]["completionMode"] == "Indexed"
    for kind in ("services", "configmaps"):
        owners = api.get(kind, NS, name)["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"]) for o in owners] == [("Job", created["metadata"]["uid"])]
    assert result.log_path == tmp_path / "logs" / "sft.1.log"
    assert result.log_path.read_text() == "stage sft index 0: done\n"
    assert (tmp_path / "logs" / "sft.1.rank-1.log").read_text() == "stage sft index 1: done\n"
    assert api.count("POST", "jobs") == 1


def test_oom_killed_pod_fails_the_stage_with_its_reason_and_log(api, executor, tmp_path):
    api.scripts["rm"] = "oom"
    result = executor.run(stage_job("rm", tmp_path, nodes=2))

    assert result.status == "failed"
    assert result.reason.startswith("OOMKilled: pod xwin-r1-rm-1-1-")
    assert result.exit_code == 137 and not result.permanent
    assert result.log_path.name == "rm.1.rank-1.log"
    assert result.log_path.read_text().endswith("Killed\n")


def test_exit_code_2_is_a_permanent_failure(api, executor, tmp_path):
    api.scripts["select"] = "user_error"
    result = executor.run(stage_job("select", tmp_path))

    assert result.status == "failed" and result.exit_code == 2 and result.permanent
    assert "exited with code 2" in result.reason
    assert "line 3" in result.log_path.read_text()


def test_image_pull_backoff_fails_after_the_grace_period_and_removes_the_job(api, tmp_path):
    problems = []
    executor = KubernetesExecutor(NS, SETTINGS, api_client=client_for(api),
                                  on_problem=lambda job, reason: problems.append(reason))
    api.scripts["sample"] = "image_pull"
    result = executor.run(stage_job("sample", tmp_path, shards=2, image="nope:1"))

    assert result.status == "failed" and result.permanent
    assert result.reason.startswith("ImagePullBackOff: pod xwin-r1-sample-1-")
    assert 'Failed to pull image "nope:1": not found' in result.reason  # from the pod's event
    assert len(problems) == 2 and all("ImagePullBackOff" in p for p in problems)  # once per pod
    name = job_name("r1", "sample", 1)
    assert ("jobs", name, "Foreground") in api.deletes
    wait_for(lambda: api.get("jobs", NS, name) is None)


def test_unschedulable_pod_is_reported_then_given_up(api, executor, tmp_path):
    api.scripts["score"] = "unschedulable"
    result = executor.run(stage_job("score", tmp_path, gpus=8))

    assert result.status == "failed" and not result.permanent
    assert result.reason.startswith("Unschedulable: pod ")
    assert "3 Insufficient nvidia.com/gpu" in result.reason


def test_watch_broken_mid_stream_resumes_from_the_last_resource_version(api, executor, tmp_path):
    api.scripts["sft"] = "hang"
    name = job_name("r1", "sft", 1)
    thread, box = in_thread(executor.run, stage_job("sft", tmp_path))
    wait_for(lambda: len(api.watch_requests()) == 1)
    api.drop_next_watch_after(1)  # the next watch breaks after one event ...
    api.expire_history()  # ... once this one is broken (this also compacts history)
    wait_for(lambda: len(api.watch_requests()) >= 3)  # the stale resume (410), then a fresh one
    before = int(api.watch_requests()[-1]["resourceVersion"])
    api.touch_job(name, ready=1)  # the one event the breaking stream delivers
    wait_for(lambda: len(api.watch_requests()) >= 4)
    api.complete_job(name)
    thread.join(10)

    assert box["result"].status == "succeeded"
    delivered = next(rv for rv, kind, _, obj in api.history
                     if kind == "jobs" and rv > before and obj["metadata"]["name"] == name)
    # The request after the broken stream picks up right after the one event it delivered.
    assert api.watch_requests()[3]["resourceVersion"] == str(delivered)
    assert api.count("POST", "jobs") == 1


def test_expired_resource_version_relists_then_watches_on(api, executor, tmp_path):
    api.scripts["dpo"] = "hang"
    job = stage_job("dpo", tmp_path)
    thread, box = in_thread(executor.run, job)
    wait_for(lambda: len(api.watch_requests()) >= 1)
    lists_before = sum(1 for m, p, q in api.requests if p.endswith("/jobs") and m == "GET"
                       and "watch" not in q)
    api.expire_history()  # breaks the open watch; its resourceVersion is gone
    wait_for(lambda: sum(1 for m, p, q in api.requests if p.endswith("/jobs") and m == "GET"
                         and "watch" not in q) > lists_before)
    api.complete_job(job_name("r1", "dpo", 1))
    thread.join(10)

    assert box["result"].status == "succeeded"
    stale = [q for q in api.watch_requests() if int(q["resourceVersion"]) < api.oldest_rv]
    assert stale, "the executor should have tried to resume from its old version first"


def test_cancel_deletes_the_run_objects_with_propagation(api, executor, tmp_path):
    api.scripts["sft"] = "hang"
    thread, box = in_thread(executor.run, stage_job("sft", tmp_path, nodes=2))
    name = job_name("r1", "sft", 1)
    wait_for(lambda: (api.get("jobs", NS, name) or {}).get("status", {}).get("ready") == 2)
    executor.cancel("r1")
    thread.join(10)

    assert box["result"].status == "cancelled"
    assert ("jobs", name, "Foreground") in api.deletes
    assert {(k, n) for k, n, _ in api.deletes} >= {("services", name), ("configmaps", name)}
    wait_for(lambda: api.get("jobs", NS, name) is None)
    assert not [p for p in api.list("pods") if name in p["metadata"]["name"]]
    # A cancelled run starts nothing more.
    assert executor.run(stage_job("rm", tmp_path)).status == "cancelled"
    assert api.count("POST", "jobs") == 1


def test_resume_adopts_the_running_job_instead_of_creating_another(api, tmp_path):
    api.scripts["sft"] = "hang"
    job = stage_job("sft", tmp_path, run_id="run-7", attempt=2, nodes=2)
    # A previous controller created the Job, then died.
    k8s.BatchV1Api(client_for(api)).create_namespaced_job(NS, render_stage(job, SETTINGS, NS).job)
    name = job_name("run-7", "sft", 2)
    wait_for(lambda: (api.get("jobs", NS, name) or {}).get("status", {}).get("ready") == 2)

    fresh = KubernetesExecutor(NS, SETTINGS, api_client=client_for(api))
    assert fresh.adopt(stage_job("sft", tmp_path, run_id="run-7", attempt=1)) is None
    thread, box = in_thread(fresh.adopt, job)
    wait_for(lambda: len(api.watch_requests()) >= 1)
    api.complete_job(name)
    thread.join(10)

    assert box["result"].status == "succeeded"
    assert api.count("POST", "jobs") == 1  # only the first controller's
    # It died before making the ConfigMap and Service: the adopter made them, owned by the Job.
    uid = api.get("jobs", NS, name)["metadata"]["uid"]
    for kind in ("configmaps", "services"):
        assert api.get(kind, NS, name)["metadata"]["ownerReferences"][0]["uid"] == uid


def test_run_of_an_existing_job_follows_it_without_a_duplicate(api, executor, tmp_path):
    api.scripts["select"] = "hang"
    job = stage_job("select", tmp_path)
    k8s.BatchV1Api(client_for(api)).create_namespaced_job(NS, render_stage(job, SETTINGS, NS).job)
    thread, box = in_thread(executor.run, job)
    wait_for(lambda: len(api.watch_requests()) >= 1)
    api.complete_job(job_name("r1", "select", 1))
    thread.join(10)

    assert box["result"].status == "succeeded"
    assert api.get("configmaps", NS, job_name("r1", "select", 1)) is not None
    assert len(api.list("jobs")) == 1


def test_a_local_store_is_refused_before_touching_the_cluster(api, executor, tmp_path):
    job = stage_job("select", tmp_path)
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"store": StoreConfig()})})
    result = executor.run(job)

    assert result.status == "failed" and result.permanent and "s3" in result.reason
    assert api.requests == []


def test_executor_from_a_kubeconfig_talks_to_the_cluster_it_names(api, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    executor = KubernetesExecutor.from_config(ExecutorConfig(namespace=NS, kubernetes=SETTINGS))

    assert executor.run(stage_job("select", tmp_path)).status == "succeeded"
    headers = {k.lower(): v for k, v in api.headers[0].items()}
    assert headers["authorization"] == "Bearer t0ken"


# -- Kueue: the test plays Kueue, patching spec.suspend through the API as Kueue does ----------

KUEUE = SETTINGS.model_copy(update={"queue": "gpu-queue", "priority_class": "research"})


def set_suspend(api: FakeKubeAPI, name: str, suspend: bool) -> None:
    k8s.BatchV1Api(client_for(api)).patch_namespaced_job(name, NS, {"spec": {"suspend": suspend}})


def pods_of(api: FakeKubeAPI, name: str) -> list[dict]:
    return [p for p in api.list("pods") if p["metadata"]["labels"]["job-name"] == name]


def test_a_queued_job_waits_suspended_until_kueue_admits_it(api, tmp_path):
    states = []
    executor = KubernetesExecutor(NS, KUEUE, api_client=client_for(api),
                                  on_queue=lambda job, state: states.append(state))
    thread, box = in_thread(executor.run, stage_job("sft", tmp_path, nodes=2))
    name = job_name("r1", "sft", 1)
    wait_for(lambda: states == ["pending quota (Kueue)"])
    created = api.get("jobs", NS, name)
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert created["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "research"
    assert created["spec"]["suspend"] is True
    assert created["spec"]["parallelism"] == created["spec"]["completions"] == 2  # one gang
    time.sleep(0.3)  # longer than the scheduler needs to run a stage: nothing may start
    assert pods_of(api, name) == [] and "result" not in box

    set_suspend(api, name, False)  # Kueue admits the Workload
    thread.join(10)

    assert box["result"].status == "succeeded" and box["result"].preemptions == 0
    assert states == ["pending quota (Kueue)", "admitted by Kueue"]
    assert api.count("POST", "jobs") == 1


def test_preemption_by_kueue_is_no_failure_and_the_stage_resumes(api, tmp_path):
    states = []
    executor = KubernetesExecutor(NS, KUEUE, api_client=client_for(api),
                                  on_queue=lambda job, state: states.append(state))
    api.scripts["sft"] = "hang"
    thread, box = in_thread(executor.run, stage_job("sft", tmp_path, nodes=2))
    name = job_name("r1", "sft", 1)
    wait_for(lambda: states == ["pending quota (Kueue)"])
    set_suspend(api, name, False)
    wait_for(lambda: (api.get("jobs", NS, name) or {}).get("status", {}).get("ready") == 2)
    wait_for(lambda: states[-1:] == ["admitted by Kueue"])
    first_pods = {p["metadata"]["name"] for p in pods_of(api, name)}

    set_suspend(api, name, True)  # preempted: the Job controller deletes the gang's pods
    wait_for(lambda: "preempted by Kueue; waiting for readmission" in states)
    assert pods_of(api, name) == [] and "result" not in box
    set_suspend(api, name, False)  # readmitted: the pods start again, from the checkpoint
    wait_for(lambda: (api.get("jobs", NS, name) or {}).get("status", {}).get("ready") == 2)
    assert not first_pods & {p["metadata"]["name"] for p in pods_of(api, name)}
    api.complete_job(name)
    thread.join(10)

    result = box["result"]
    assert result.status == "succeeded" and result.preemptions == 1
    assert "preempted by Kueue 1 time(s)" in result.reason
    assert states == ["pending quota (Kueue)", "admitted by Kueue",
                      "preempted by Kueue; waiting for readmission", "admitted by Kueue"]
    assert api.count("POST", "jobs") == 1  # the same Job, not a new attempt


def test_without_a_queue_jobs_start_at_once_and_report_no_queue_state(api, tmp_path):
    states = []
    executor = KubernetesExecutor(NS, SETTINGS, api_client=client_for(api),
                                  on_queue=lambda job, state: states.append(state))
    assert executor.run(stage_job("select", tmp_path)).status == "succeeded"
    created = api.get("jobs", NS, job_name("r1", "select", 1))
    assert "suspend" not in created["spec"] and states == []
    assert not any(k.startswith("kueue.x-k8s.io/") for k in created["metadata"]["labels"])


def test_a_gang_gets_a_network_policy_owned_by_its_job_and_deleted_with_it(api, executor, tmp_path):
    api.scripts["sft"] = "hang"
    thread, box = in_thread(executor.run, stage_job("sft", tmp_path, nodes=2))
    name = job_name("r1", "sft", 1)
    wait_for(lambda: api.get("networkpolicies", NS, name) is not None)
    policy = api.get("networkpolicies", NS, name)
    uid = api.get("jobs", NS, name)["metadata"]["uid"]
    assert [(o["kind"], o["uid"]) for o in policy["metadata"]["ownerReferences"]] == [("Job", uid)]
    gang = {"matchLabels": {"batch.kubernetes.io/job-name": name}}
    assert policy["spec"] == {"podSelector": gang, "policyTypes": ["Ingress"],
                              "ingress": [{"from": [{"podSelector": gang}]}]}
    executor.cancel("r1")
    thread.join(10)

    assert box["result"].status == "cancelled"
    assert ("networkpolicies", name) in {(k, n) for k, n, _ in api.deletes}
    assert api.get("networkpolicies", NS, name) is None
    # single-pod stages have no gang to fence
    assert executor.run(stage_job("select", tmp_path, run_id="r2")).status == "succeeded"
    assert api.list("networkpolicies") == []


def test_the_judge_key_reaches_the_created_job_as_a_secret_reference_only(api, executor, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("XWIN_JUDGE_API_KEY", "sk-canary-in-the-controller")  # the controller's own
    result = executor.run(stage_job("eval", tmp_path))

    assert result.status == "succeeded"
    created = api.get("jobs", NS, job_name("r1", "eval", 1))
    env = {e["name"]: e for e in created["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["XWIN_JUDGE_API_KEY"] == {"name": "XWIN_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "xwin-judge", "key": "api-key", "optional": True}}}
    sent = yaml.safe_dump([api.get(kind, NS, job_name("r1", "eval", 1)) for kind in ("jobs", "configmaps")])
    assert "sk-canary" not in sent
