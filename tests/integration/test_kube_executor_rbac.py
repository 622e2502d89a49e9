"""Every API call the executor makes is one the controller's Role allows: the requests the
executor sent to the API server in its scenarios (success, failure reasons, give-up, cancel,
adopt), mapped to RBAC verbs, checked against k8s/rbac.yaml and the chart's Role."""

from __future__ import annotations

import subprocess
from pathlib import Path

import k8s_tools as tools
import pytest
import yaml
from kube_api_server import FakeKubeAPI
from test_kube_executor import NS, SETTINGS, client_for, in_thread, stage_job, wait_for

from xwin.executors.kubernetes.executor import KubernetesExecutor
from xwin.executors.kubernetes.judge_server import judge_to_serve
from xwin.executors.kubernetes.naming import job_name

ROOT = Path(__file__).resolve().parents[2]


def verbs_used(api: FakeKubeAPI) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every request, as the API server's authorizer sees it."""
    used = set()
    for method, path, query in api.requests:
        parts = path.strip("/").split("/")
        group = parts[1] if parts[0] == "apis" else ""  # /apis/<group>/<version>/...
        rest = parts[parts.index("namespaces") + 2:]
        resource, named = rest[0], len(rest) > 1
        if len(rest) == 3:
            resource = f"{resource}/{rest[2]}"
        if method == "POST":
            verb = "create"
        elif method == "DELETE":
            verb = "delete"
        elif named:
            verb = "get"
        else:
            verb = "watch" if query.get("watch") in ("true", "1") else "list"
        used.add((group, resource, verb))
    return used


def allowed(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def chart_role() -> dict:
    try:
        helm = tools.helm()
    except tools.ToolNotFound as e:
        pytest.skip(str(e))
    out = subprocess.run([str(helm), "template", "r", str(ROOT / "helm" / "xwin")],
                         capture_output=True, text=True, check=True).stdout
    return next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Role")


@pytest.fixture(scope="module")
def used(tmp_path_factory) -> set[tuple[str, str, str]]:
    api = FakeKubeAPI()
    tmp = tmp_path_factory.mktemp("rbac")
    try:
        executor = KubernetesExecutor(NS, SETTINGS, api_client=client_for(api))
        executor.run(stage_job("sft", tmp, nodes=2))
        api.scripts["rm"] = "oom"
        executor.run(stage_job("rm", tmp))
        api.scripts["sample"] = "image_pull"
        executor.run(stage_job("sample", tmp, shards=2))
        api.scripts["dpo"] = "hang"
        executor.adopt(stage_job("dpo", tmp))  # nothing to adopt
        thread, _ = in_thread(executor.run, stage_job("dpo", tmp))
        wait_for(lambda: api.get("jobs", NS, job_name("r1", "dpo", 1)) is not None)
        executor.cancel("r1")
        thread.join(10)
        # a judged stage: its judge server made, waited for, deleted; adopted on resume
        executor.judge_servers.poll_s = 0.02
        judged = stage_job("eval", tmp, run_id="r2")
        judged = judged.model_copy(update={"spec": judged.spec.model_copy(
            update={"inputs": {"model:sft": "sft/abc", "judge": "prepare/abc#base_model"}})})
        executor.run(judged)
        executor.judge_servers.ensure(judged, judge_to_serve(judged))
        api.scripts["eval"] = "hang"
        thread, _ = in_thread(executor.run, judged)
        wait_for(lambda: api.get("jobs", NS, job_name("r2", "eval", 1)) is not None)
        executor.cancel("r2")
        thread.join(10)
        return verbs_used(api)
    finally:
        api.close()


def test_the_scenarios_exercise_the_whole_executor(used):
    assert {("batch", "jobs", v) for v in ("create", "list", "watch", "delete")} <= used
    assert {("", "pods/log", "get"), ("", "events", "list"), ("", "configmaps", "create")} <= used
    assert {("networking.k8s.io", "networkpolicies", v) for v in ("create", "delete")} <= used
    assert {("apps", "deployments", v) for v in ("create", "get", "list", "delete")} <= used


@pytest.mark.parametrize("source", ["k8s/rbac.yaml", "chart"])
def test_the_controller_role_allows_every_call(used, source):
    if source == "chart":
        role = chart_role()
    else:
        role = next(d for d in yaml.safe_load_all((ROOT / source).read_text()) if d["kind"] == "Role")
    assert used - allowed(role) == set()
