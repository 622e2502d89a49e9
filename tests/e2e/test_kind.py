"""The CPU demo pipeline end to end on a real cluster: kind, the images built for the CPU and
loaded into it, MinIO and the controller from the chart, every stage as Jobs, to completion.

Needs a running container engine (docker) and kind; run with `make e2e-kind` (pytest -m e2e).
Environment knobs: XWIN_KIND_CLUSTER (name, default xwin-e2e), XWIN_KIND_KEEP=1 (keep the
cluster afterwards), XWIN_E2E_SKIP_BUILD=1 (the xwin-*:e2e images exist already).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import k8s_tools as tools
import pytest
import yaml

from xwin.stages.registry import STAGE_NAMES

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("XWIN_KIND_CLUSTER", "xwin-e2e")
NAMESPACE = "xwin"
RELEASE = "e2e"
TAG = "e2e"
IMAGES = ("trainer", "sampler", "controller")
DEADLINE_S = 3 * 3600


def missing_engine() -> str | None:
    """Why this machine cannot run kind, or None."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        detail = (info.stderr or info.stdout).strip().splitlines()
        return f"no container engine running (`docker info` fails: {detail[-1] if detail else ''})"
    if shutil.which("kind") is None:
        return "kind is not installed (https://kind.sigs.k8s.io)"
    return None


def sh(*argv, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, argv)), flush=True)
    return subprocess.run([str(a) for a in argv], check=check, text=True, **kwargs)


@pytest.fixture(scope="module")
def kubeconfig(request, tmp_path_factory) -> Path:
    if reason := missing_engine():
        pytest.skip(reason)
    if "e2e" not in (request.config.getoption("-m") or ""):
        pytest.skip("the kind end-to-end test runs with `make e2e-kind` (pytest -m e2e)")
    config = tmp_path_factory.mktemp("kind") / "kubeconfig"
    existing = sh("kind", "get", "clusters", capture_output=True).stdout.split()
    if CLUSTER not in existing:
        sh("kind", "create", "cluster", "--name", CLUSTER, "--config", ROOT / "k8s" / "kind-cluster.yaml",
           "--kubeconfig", config, "--wait", "5m")
    else:
        config.write_text(sh("kind", "get", "kubeconfig", "--name", CLUSTER, capture_output=True).stdout)
    if os.environ.get("XWIN_E2E_SKIP_BUILD") != "1":
        for image in IMAGES:
            sh("docker", "build", "-f", ROOT / "images" / f"{image}.Dockerfile", "--build-arg",
               "VARIANT=cpu", "-t", f"xwin-{image}:{TAG}", ROOT)
    for image in IMAGES:
        sh("kind", "load", "docker-image", f"xwin-{image}:{TAG}", "--name", CLUSTER)
    yield config
    if os.environ.get("XWIN_KIND_KEEP") != "1":
        sh("kind", "delete", "cluster", "--name", CLUSTER, check=False)


def demo_values() -> dict:
    """The chart's values for the CPU demo: its stage sections, the e2e images, MinIO."""
    demo = yaml.safe_load((ROOT / "examples" / "demo-cpu.yaml").read_text())
    pipeline = {k: v for k, v in demo.items() if k not in ("store", "executor")}
    pipeline["run"] = {k: v for k, v in pipeline.get("run", {}).items() if k != "workdir"}
    images = {name: {"repository": f"xwin-{name}", "tag": TAG} for name in IMAGES}
    return {
        "pipeline": pipeline,
        "images": {**images, "pullPolicy": "Never"},
        # kind nodes share one machine: smaller requests than the defaults in jobs/
        "profiles": {stage: {"cpu": "1"} for stage in STAGE_NAMES},
        "minio": {"enabled": True},
        "controller": {"activeDeadlineSeconds": DEADLINE_S},
    }


def test_cpu_demo_runs_through_the_chart_to_completion(kubeconfig, tmp_path):
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    kubectl, helm = tools.kubectl(), tools.helm()
    sh(kubectl, "apply", "-f", ROOT / "k8s" / "namespace.yaml", env=env)
    values = tmp_path / "values.json"  # JSON: helm's YAML 1.1 would read the key `n` as false
    values.write_text(json.dumps(demo_values()))
    sh(helm, "upgrade", "--install", RELEASE, ROOT / "helm" / "xwin", "--namespace", NAMESPACE,
       "-f", values, env=env)
    controller = f"job/{RELEASE}-xwin-controller"
    try:
        outcome = wait_for_job(kubectl, controller, env)
    finally:
        logs = sh(kubectl, "-n", NAMESPACE, "logs", controller, "--all-containers", "--tail=200",
                  env=env, capture_output=True, check=False)
        print(logs.stdout, logs.stderr)
    assert outcome == "Complete", f"controller {outcome}; see its log above"

    jobs = json.loads(sh(kubectl, "-n", NAMESPACE, "get", "jobs", "-l",
                         f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=stage",
                         "-o", "json", env=env, capture_output=True).stdout)["items"]
    done = {j["metadata"]["labels"]["xwin.dev/stage"] for j in jobs
            if any(c["type"] == "Complete" and c["status"] == "True"
                   for c in j.get("status", {}).get("conditions", []))}
    assert {"prepare", "sft", "rm", "sample", "score", "select", "rs", "dpo", "eval"} <= done


def wait_for_job(kubectl: Path, job: str, env: dict) -> str:
    """Complete or Failed, polling the Job's conditions."""
    deadline = time.monotonic() + DEADLINE_S + 600
    while time.monotonic() < deadline:
        got = sh(kubectl, "-n", NAMESPACE, "get", job, "-o", "json", env=env, capture_output=True,
                 check=False)
        if got.returncode == 0:
            for cond in json.loads(got.stdout).get("status", {}).get("conditions", []):
                if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                    return cond["type"]
        time.sleep(20)
    return "timed out"
