"""The judge server's objects, built from typed models: when a stage gets one, what it runs,
schema-valid for Kubernetes 1.33, locked down, and reachable only from the run's stage pods."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes import client as k8s
from test_k8s_manifests import assert_restricted

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.stage_io import StageSpec
from xwin.executors.base import StageJob
from xwin.executors.kubernetes.judge_server import (
    judge_to_serve,
    render_judge_server,
    server_pod_problem,
    with_judge_endpoint,
)
from xwin.executors.kubernetes.naming import judge_server_name, run_label
from xwin.executors.kubernetes.render import render_stage, to_dict
from xwin.executors.kubernetes.settings import KubernetesConfig
from xwin.executors.profiles import JobProfile, load_profiles

JOBS = Path(__file__).resolve().parents[2] / "jobs"
K8S_VERSION = "1.33.0"
S3 = StoreConfig(kind="s3", bucket="b", endpoint_url="http://minio:9000")
JUDGE_INPUT = {"model:sft": "sft/feedbeef", "judge": "prepare/0a1b#base_model"}


def judged_job(stage: str = "eval", config: dict | None = None, inputs: dict | None = None,
               run_id: str = "run-1") -> StageJob:
    spec = StageSpec(stage=stage, run_id=run_id, store=S3, output=f"{stage}/0123abcd",
                     inputs=JUDGE_INPUT if inputs is None else inputs, config=config or {},
                     config_digest="d1")
    return StageJob(run_id=run_id, stage=stage, spec=spec, profile=load_profiles(JOBS)[stage],
                    log_dir=Path("/tmp/logs"))


def render(job: StageJob, profile: JobProfile | None = None, **settings):
    judge = judge_to_serve(job)
    assert judge is not None
    return render_judge_server(job, judge, profile or JobProfile(image="xwin-sampler:dev"),
                               KubernetesConfig(**settings), "ml")


@pytest.mark.parametrize(("stage", "config", "inputs", "served"), [
    ("eval", {}, None, "base_model"),
    ("eval", {"judge": {"model": "judge"}}, None, "judge"),
    ("eval", {"mtbench": {"enabled": False}}, {**JUDGE_INPUT, "alpaca": "data/alpaca"}, "base_model"),
    ("annotate", {}, {"judge": "models/judge-7b"}, "judge-7b"),
    ("annotate", {"method": "verifiable"}, {"judge": "models/judge-7b"}, "judge-7b"),
    ("sft", {}, None, None),
    ("eval", {"judge": {"base_url": "https://api.example/v1", "model": "gpt-4o"}}, None, None),
    ("eval", {"mtbench": {"enabled": False}}, None, None),
    ("annotate", {"method": "verifiable", "verifiable_ties": "drop"}, None, None),
    ("eval", {}, {"model:sft": "sft/feedbeef"}, None),
])
def test_a_stage_gets_a_server_only_when_it_judges_with_a_local_model(stage, config, inputs, served):
    judge = judge_to_serve(judged_job(stage, config, inputs))
    assert (judge.served_name if judge else None) == served


def test_a_judge_in_the_image_is_served_from_its_path_without_a_fetch():
    job = judged_job(config={"judge": {"model_path": "/models/judge"}}, inputs={"model:sft": "x"})
    pod = render(job).deployment.spec.template.spec
    assert pod.init_containers is None
    assert pod.containers[0].args[3] == "/models/judge"


def test_objects_are_schema_valid_and_the_pod_locked_down():
    profile = JobProfile(image="reg/xwin-sampler:1", gpus=2, cpu="8", memory="64Gi",
                         shm_size="8Gi", node_selector={"pool": "h100"}, priority_class="high",
                         tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                       "effect": "NoSchedule"}], env={"VLLM_LOGGING_LEVEL": "INFO"})
    rendered = render(judged_job(), profile, image_pull_secrets=["regcred"],
                      service_account="xwin-stage", labels={"team": "ml"})
    docs = rendered.to_dicts()
    assert [d["kind"] for d in docs] == ["NetworkPolicy", "Service", "Deployment"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["labels"]["team"] == "ml"
    pod = docs[2]["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "xwin-stage"
    server = pod["containers"][0]
    assert server["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert " --tensor-parallel-size 2" in " ".join(server["args"])
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"} in server["env"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_the_server_runs_vllm_on_the_fetched_model_with_the_judge_server_flags():
    job = judged_job(config={"judge": {"server": {"max_model_len": 2048, "kv_cache_gib": 2.0}}})
    rendered = render(job)
    pod = rendered.deployment.spec.template.spec
    fetch = pod.init_containers[0]
    assert fetch.command == ["xwin", "artifacts", "get", "prepare/0a1b", "--dest",
                             "/var/lib/xwin/judge-model"]
    secrets = {e.name: e.value_from.secret_key_ref.name for e in fetch.env if e.value_from}
    assert secrets == {"AWS_ACCESS_KEY_ID": "xwin-s3", "AWS_SECRET_ACCESS_KEY": "xwin-s3"}
    assert all("SECRET" not in (e.value or "") for e in fetch.env)
    server = pod.containers[0]
    args = " ".join(server.args)
    assert args.startswith("-m vllm.entrypoints.openai.api_server --model "
                           "/var/lib/xwin/judge-model/base_model --host 0.0.0.0 --port 8000")
    assert "--max-model-len 2048" in args and f"--kv-cache-memory-bytes {2 * 2**30}" in args
    assert "--dtype float32" in args  # auto, on a CPU pod
    assert server.readiness_probe.http_get.path == "/health"
    assert rendered.base_url == f"http://{judge_server_name('run-1', 'eval')}.ml.svc:8000/v1"


def test_only_the_runs_stage_pods_may_reach_the_server_on_its_port():
    policy = to_dict(render(judged_job(run_id="Run_7")).network_policy)
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress open: the store, DNS
    rule, = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "xwin", "app.kubernetes.io/component": "stage",
        "xwin.dev/run": run_label("Run_7")}}}]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    # the stage's pods carry exactly those labels
    stage_pod = render_stage(judged_job(run_id="Run_7"), KubernetesConfig(), "ml").job.spec.template
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= stage_pod.metadata.labels.items()


@pytest.mark.parametrize("run_id", ["r", "x" * 80, "Exp/2026-12-02 lr=1e-5"])
def test_names_are_dns_labels_and_the_service_selects_the_servers_pods(run_id):
    rendered = render(judged_job(run_id=run_id))
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", rendered.name) and len(rendered.name) <= 63
    selector = rendered.service.spec.selector
    assert selector == rendered.deployment.spec.selector.match_labels
    assert selector.items() <= rendered.deployment.spec.template.metadata.labels.items()


def test_the_endpoint_goes_into_a_copy_of_the_stage_spec():
    job = judged_job(config={"judge": {"max_concurrency": 4}})
    pointed = with_judge_endpoint(job, "http://s.ml.svc:8000/v1", "base_model")
    assert pointed.spec.config["judge"] == {"max_concurrency": 4, "base_url": "http://s.ml.svc:8000/v1",
                                            "model": "base_model", "api_key_env": None}
    assert job.spec.config["judge"] == {"max_concurrency": 4}
    assert judge_to_serve(pointed) is None  # it now has an endpoint


def pod(statuses: list[k8s.V1ContainerStatus], init: bool = False) -> k8s.V1Pod:
    status = k8s.V1PodStatus(phase="Running", **{
        "init_container_statuses" if init else "container_statuses": statuses})
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p"), status=status)


def crashed(restarts: int, name: str = "judge-server") -> k8s.V1ContainerStatus:
    return k8s.V1ContainerStatus(
        name=name, image="i", image_id="", ready=False, restart_count=restarts,
        state=k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="CrashLoopBackOff")),
        last_state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(
            exit_code=137, reason="OOMKilled")))


def test_a_crashing_server_or_fetch_is_a_problem_after_repeated_restarts():
    assert server_pod_problem(pod([crashed(1)])) is None  # one crash may be a fluke
    problem = server_pod_problem(pod([crashed(2)]))
    assert (problem.reason, problem.failed) == ("CrashLoopBackOff", True)
    assert problem.message == "container judge-server crashed 2 times, last exit code 137 (OOMKilled)"
    fetch = server_pod_problem(pod([crashed(3, "fetch-model")], init=True))
    assert fetch.message.startswith("container fetch-model crashed 3 times")
