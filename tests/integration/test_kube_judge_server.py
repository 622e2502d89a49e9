"""The judge server an eval or annotate stage gets on Kubernetes, through the official client
over HTTP against kube_api_server.py: made (or adopted) and ready before the stage's Job, its
URL in the Job's spec, deleted when the stage succeeds, fails or is cancelled, and the reason
shown while it cannot start."""

from __future__ import annotations

import signal
import time

import pytest
import yaml
from kube_api_server import FakeKubeAPI, now
from test_kube_executor import JOBS, NS, SETTINGS, client_for, in_thread, stage_job, wait_for

from xwin.executors.base import StageJob
from xwin.executors.kubernetes.executor import KubernetesExecutor
from xwin.executors.kubernetes.judge_server import judge_to_serve
from xwin.executors.kubernetes.naming import job_name, judge_server_name
from xwin.executors.profiles import load_judge_server_profile

SERVER = judge_server_name("r1", "eval")
URL = f"http://{SERVER}.{NS}.svc:8000/v1"
JUDGE_KINDS = ("deployments", "services", "networkpolicies")


@pytest.fixture
def api():
    server = FakeKubeAPI()
    yield server
    server.close()


def make_executor(api: FakeKubeAPI, problems: list | None = None,
                  user_agent: str | None = None) -> KubernetesExecutor:
    profile = load_judge_server_profile(JOBS, {"judge-server": {"gpus": 1}})
    on_problem = (lambda job, reason: problems.append((job.stage, reason))) \
        if problems is not None else None
    client = client_for(api)
    if user_agent:
        client.user_agent = user_agent  # tells this executor's requests apart
    executor = KubernetesExecutor(NS, SETTINGS, api_client=client, on_problem=on_problem,
                                  judge_server_profile=profile)
    executor.judge_servers.poll_s = 0.02
    return executor


def eval_job(tmp_path, config: dict | None = None, inputs: dict | None = None) -> StageJob:
    job = stage_job("eval", tmp_path)
    spec = job.spec.model_copy(update={
        "config": config or {},
        "inputs": inputs or {"model:sft": "sft/abc", "judge": "prepare/abc#base_model"}})
    return job.model_copy(update={"spec": spec})


def stage_spec_of(api: FakeKubeAPI, name: str) -> dict:
    return yaml.safe_load(api.get("configmaps", NS, name)["data"]["spec.yaml"])


def first_event(api: FakeKubeAPI, kind: str, predicate) -> int:
    """The resourceVersion of the first recorded event of `kind` whose object matches."""
    return next(rv for rv, k, _, obj in api.history if k == kind and predicate(obj))


def assert_server_gone(api: FakeKubeAPI) -> None:
    for kind in JUDGE_KINDS:
        assert api.get(kind, NS, SERVER) is None, kind
    assert [p for p in api.list("pods") if p["metadata"]["name"].startswith(SERVER)] == []


def test_server_is_ready_before_the_job_which_calls_it_and_is_deleted_after(api, tmp_path):
    result = make_executor(api).run(eval_job(tmp_path))

    assert result.status == "succeeded"
    name = job_name("r1", "eval", 1)
    ready_at = first_event(api, "deployments",
                           lambda d: d.get("status", {}).get("availableReplicas") == 1)
    job_at = first_event(api, "jobs", lambda j: j["metadata"]["name"] == name)
    assert ready_at < job_at  # the Job was created only once the server was available
    judge = stage_spec_of(api, name)["config"]["judge"]
    assert (judge["base_url"], judge["model"], judge["api_key_env"]) == (URL, "base_model", None)
    assert api.count("POST", "deployments") == 1
    assert ("deployments", SERVER, "Foreground") in api.deletes
    assert_server_gone(api)


def test_the_server_serves_the_judge_fetched_from_the_store_on_its_gpu(api, tmp_path):
    thread, box = in_thread(make_executor(api).run, eval_job(tmp_path))
    thread.join(10)
    deployment = next(obj for _, k, t, obj in api.history if k == "deployments" and t == "ADDED")
    pod = deployment["spec"]["template"]["spec"]
    fetch, = pod["initContainers"]
    assert fetch["command"] == ["xwin", "artifacts", "get", "prepare/abc",
                                "--dest", "/var/lib/xwin/judge-model"]
    store = next(e["value"] for e in fetch["env"] if e["name"] == "XWIN_STORE")
    assert yaml.safe_load(store)["bucket"] == "xwin-test"
    server, = pod["containers"]
    args = " ".join(server["args"])
    assert "--model /var/lib/xwin/judge-model/base_model" in args
    assert "--served-model-name base_model" in args and "--port 8000" in args
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = next(obj for _, k, t, obj in api.history if k == "services" and t == "ADDED")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert box["result"].status == "succeeded"


def test_server_is_deleted_when_the_stage_fails(api, tmp_path):
    api.scripts["eval"] = "oom"
    result = make_executor(api).run(eval_job(tmp_path))

    assert result.status == "failed" and "OOMKilled" in result.reason
    assert_server_gone(api)


def test_cancel_deletes_the_running_stage_and_its_server(api, tmp_path):
    api.scripts["eval"] = "hang"
    executor = make_executor(api)
    thread, box = in_thread(executor.run, eval_job(tmp_path))
    wait_for(lambda: api.get("jobs", NS, job_name("r1", "eval", 1)) is not None)
    assert api.get("deployments", NS, SERVER) is not None

    executor.cancel("r1")
    thread.join(10)

    assert box["result"].status == "cancelled"
    assert_server_gone(api)


class Detach(BaseException):  # noqa: N818 (what the controller's signal handler raises)
    pass


def test_a_controller_that_detaches_leaves_the_running_stage_its_server(api, tmp_path):
    """SIGTERM to the controller (a drain) raises out of the watch, as the controller's own
    handler does: the Job runs on and still calls its judge, so the server must stay."""
    api.scripts["eval"] = "hang"
    executor = make_executor(api)

    def detach(signum, frame):
        raise Detach

    previous = signal.signal(signal.SIGALRM, detach)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(Detach):
            executor.run(eval_job(tmp_path))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert api.get("jobs", NS, job_name("r1", "eval", 1)) is not None
    for kind in JUDGE_KINDS:
        assert api.get(kind, NS, SERVER) is not None, kind
    assert not any(name == SERVER for _, name, _ in api.deletes)


def test_cancel_while_the_server_starts_creates_no_job(api, tmp_path):
    api.deployment_scripts["eval"] = "never"
    executor = make_executor(api)
    thread, box = in_thread(executor.run, eval_job(tmp_path))
    wait_for(lambda: any(p["metadata"]["name"].startswith(SERVER) for p in api.list("pods")))

    executor.cancel("r1")
    thread.join(10)

    assert box["result"].status == "cancelled"
    assert api.count("POST", "jobs") == 0
    assert_server_gone(api)


def test_a_resumed_run_adopts_the_server_its_predecessor_started(api, tmp_path):
    # The first controller died after starting the server, before creating the Job.
    job = eval_job(tmp_path)
    make_executor(api).judge_servers.ensure(job, judge_to_serve(job))
    wait_for(lambda: api.get("deployments", NS, SERVER)["status"].get("availableReplicas"))

    result = make_executor(api).run(job)

    assert result.status == "succeeded"
    assert api.count("POST", "deployments") == 1
    assert stage_spec_of(api, job_name("r1", "eval", 1))["config"]["judge"]["base_url"] == URL
    assert_server_gone(api)


def test_a_resumed_run_adopting_the_running_job_keeps_its_server(api, tmp_path):
    api.scripts["eval"] = "hang"
    first = make_executor(api)
    thread, _ = in_thread(first.run, eval_job(tmp_path))
    name = job_name("r1", "eval", 1)
    wait_for(lambda: api.get("jobs", NS, name) is not None)

    second, box = in_thread(make_executor(api, user_agent="resumed").adopt,
                            eval_job(tmp_path / "resumed"))  # its own log folder
    # the resumed controller follows the Job once it has found the server ready
    wait_for(lambda: any(h.get("User-Agent") == "resumed" and q.get("watch") == "true"
                         for (_, _, q), h in zip(api.requests, api.headers)))
    api.complete_job(name)
    second.join(10)
    thread.join(10)

    assert box["result"].status == "succeeded"
    assert api.count("POST", "deployments") == 1 and api.count("POST", "jobs") == 1
    assert_server_gone(api)


@pytest.mark.parametrize(("script", "reason", "detail", "permanent"), [
    ("image_pull", "ImagePullBackOff", "manifest unknown", True),
    ("unschedulable", "Unschedulable", "Insufficient nvidia.com/gpu", False),
    ("crash", "CrashLoopBackOff", "crashed 3 times, last exit code 1", False),
])
def test_a_server_that_cannot_start_says_why_and_fails_the_stage(api, tmp_path, script, reason,
                                                                 detail, permanent):
    api.deployment_scripts["eval"] = script
    problems: list = []
    result = make_executor(api, problems).run(eval_job(tmp_path))

    assert result.status == "failed" and result.permanent is permanent
    assert result.reason.startswith(f"judge server {SERVER}: {reason}: pod {SERVER}-")
    assert detail in result.reason
    assert len(problems) == 1 and problems[0][0] == "eval" and reason in problems[0][1]
    assert api.count("POST", "jobs") == 0
    assert_server_gone(api)


def test_a_server_not_ready_in_its_startup_time_fails_the_stage(api, tmp_path):
    api.deployment_scripts["eval"] = "never"
    job = eval_job(tmp_path, {"judge": {"server": {"startup_timeout_s": 0.3}}})
    result = make_executor(api).run(job)

    assert result.status == "failed"
    assert f"judge server {NS}/{SERVER} not ready after" in result.reason
    assert api.count("POST", "jobs") == 0
    assert_server_gone(api)


@pytest.mark.parametrize(("stage", "config", "inputs"), [
    ("eval", {"judge": {"base_url": "https://judge.example/v1", "model": "gpt-4o"}}, None),
    ("eval", {"mtbench": {"enabled": False}}, None),
    ("eval", {}, {"model:sft": "sft/abc"}),
    ("annotate", {"method": "verifiable", "verifiable_ties": "drop"}, None),
])
def test_no_server_where_the_stage_judges_nothing_locally(api, tmp_path, stage, config, inputs):
    job = stage_job(stage, tmp_path)
    spec = job.spec.model_copy(update={
        "config": config, "inputs": inputs or {"model:sft": "sft/abc", "judge": "prepare/abc#m"}})
    result = make_executor(api).run(job.model_copy(update={"spec": spec}))

    assert result.status == "succeeded"
    assert api.count("POST", "deployments") == 0
    judge = stage_spec_of(api, job_name("r1", stage, 1))["config"].get("judge", {})
    assert judge.get("base_url") == config.get("judge", {}).get("base_url")


def test_annotate_by_a_judge_gets_its_own_server(api, tmp_path):
    job = stage_job("annotate", tmp_path)
    spec = job.spec.model_copy(update={"config": {"method": "pairwise"},
                                       "inputs": {"judge": "models/judge-7b"}})
    result = make_executor(api).run(job.model_copy(update={"spec": spec}))

    assert result.status == "succeeded"
    name = judge_server_name("r1", "annotate")
    judge = stage_spec_of(api, job_name("r1", "annotate", 1))["config"]["judge"]
    assert judge["base_url"] == f"http://{name}.{NS}.svc:8000/v1"
    assert judge["model"] == "judge-7b"
    assert api.count("POST", "deployments") == 1 and api.get("deployments", NS, name) is None


def test_a_retry_waits_for_the_server_being_deleted_and_gets_a_new_one(api, tmp_path):
    job = eval_job(tmp_path)
    executor = make_executor(api)
    executor.judge_servers.ensure(job, judge_to_serve(job))
    # the previous attempt's server is going away (Foreground: its pods first)
    api.patch("deployments", NS, SERVER, {"metadata": {"deletionTimestamp": now()}})
    old_uid = api.get("deployments", NS, SERVER)["metadata"]["uid"]
    thread, box = in_thread(executor.run, job)
    time.sleep(0.3)
    assert api.count("POST", "jobs") == 0  # still waiting for the old server to go
    api.delete("deployments", NS, SERVER, "Foreground")
    api.delete("services", NS, SERVER, None)
    thread.join(10)

    assert box["result"].status == "succeeded"
    assert api.count("POST", "deployments") == 2
    created = [o for _, k, t, o in api.history if k == "deployments" and t == "ADDED"]
    assert created[-1]["metadata"]["uid"] != old_uid
    assert_server_gone(api)
