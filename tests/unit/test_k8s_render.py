"""Stage Jobs rendered from typed models: schema-valid for Kubernetes 1.33, and shaped as the
design says (gangs, shards, security, labels, secrets)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.stage_io import StageSpec
from xwin.config import ExecutorConfig
from xwin.core.errors import ConfigError
from xwin.executors.base import StageJob
from xwin.executors.kubernetes.naming import job_name, run_label
from xwin.executors.kubernetes.render import SPEC_PATH, render_stage
from xwin.executors.kubernetes.settings import KubernetesConfig
from xwin.executors.launch import stage_launch
from xwin.executors.profiles import load_profiles
from xwin.stages.registry import STAGE_NAMES

JOBS = Path(__file__).resolve().parents[2] / "jobs"
K8S_VERSION = "1.33.0"
S3 = StoreConfig(kind="s3", bucket="b", endpoint_url="http://minio:9000")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def stage_job(stage: str, run_id: str = "run-1", attempt: int = 1, store: StoreConfig = S3,
              config: dict | None = None, **profile) -> StageJob:
    profiles = load_profiles(JOBS, {stage: profile} if profile else None)
    spec = StageSpec(stage=stage, run_id=run_id, store=store, output=f"{stage}/0123abcd",
                     inputs={"model": "sft/feedbeef"}, config=config or {}, config_digest="d1")
    return StageJob(run_id=run_id, stage=stage, attempt=attempt, spec=spec,
                    profile=profiles[stage], log_dir=Path("/tmp/logs"))


def render(job: StageJob, **settings):
    return render_stage(job, ExecutorConfig(namespace="ml", kubernetes=KubernetesConfig(**settings)))


def env_of(rendered) -> dict:
    return {e.name: e for e in rendered.container.env}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_stage_renders_schema_valid_objects(stage):
    for doc in render(stage_job(stage)).to_dicts():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_gpu_gang_objects_are_schema_valid():
    job = stage_job("sft", nodes=4, nproc_per_node=8, gpus=8, shm_size="64Gi",
                    node_selector={"pool": "h100"}, priority_class="high", active_deadline_s=3600,
                    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                  "effect": "NoSchedule", "tolerationSeconds": 30}])
    for doc in render(job, image_pull_secrets=["regcred"], work_volume_size="100Gi",
                      image_pull_policy="Always").to_dicts():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_wrong_field():
    doc = render(stage_job("select")).to_dicts()[-1]
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_training_stage_is_an_indexed_gang_with_a_headless_service():
    rendered = render(stage_job("sft", nodes=2, nproc_per_node=8, gpus=8, shm_size="64Gi"))
    name = job_name("run-1", "sft", 1)
    spec = rendered.job.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism) == ("Indexed", 2, 2)
    pod = spec.template.spec
    assert pod.subdomain == rendered.service.metadata.name == name
    svc = rendered.service.spec
    assert svc.cluster_ip == "None" and svc.publish_not_ready_addresses
    assert svc.selector == {"batch.kubernetes.io/job-name": name}
    env = env_of(rendered)
    assert env["MASTER_ADDR"].value == f"{name}-0.{name}.ml.svc"
    assert env["MASTER_PORT"].value == "29500"
    assert env["XWIN_NNODES"].value == "2" and env["XWIN_NPROC_PER_NODE"].value == "8"
    assert "RANK" not in env  # 8 processes per pod: the stage's launcher assigns ranks
    limits = rendered.container.resources.limits
    assert limits["nvidia.com/gpu"] == rendered.container.resources.requests["nvidia.com/gpu"] == "8"
    shm = next(v for v in pod.volumes if v.name == "shm")
    assert (shm.empty_dir.medium, shm.empty_dir.size_limit) == ("Memory", "64Gi")
    assert any(m.mount_path == "/dev/shm" for m in rendered.container.volume_mounts)


def test_a_multi_node_gang_admits_ingress_only_from_its_own_pods():
    rendered = render(stage_job("sft", nodes=2))
    name = job_name("run-1", "sft", 1)
    policy = rendered.network_policy
    gang = {"batch.kubernetes.io/job-name": name}
    assert policy.metadata.name == name and policy.metadata.namespace == "ml"
    assert policy.spec.pod_selector.match_labels == gang
    assert policy.spec.policy_types == ["Ingress"]  # egress open: the store, DNS, registries
    [rule] = policy.spec.ingress
    assert rule.ports is None  # any port: rendezvous and NCCL's
    assert [peer.pod_selector.match_labels for peer in rule._from] == [gang]
    assert [peer.namespace_selector for peer in rule._from] == [None]  # this namespace only
    kinds = [d["kind"] for d in rendered.to_dicts()]
    assert kinds == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    for doc in rendered.to_dicts():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # one pod talks to itself only; shards and small stages do not talk at all
    for job in (stage_job("sft", nodes=1), stage_job("sample", shards=4), stage_job("select")):
        assert render(job).network_policy is None


@pytest.mark.parametrize("stage", ["sft", "sample", "select"])
def test_kueue_jobs_are_suspended_and_labelled_with_queue_and_priority(stage):
    rendered = render(stage_job(stage), queue="gpu", priority_class="research")
    job = rendered.job
    assert job.spec.suspend is True  # Kueue unsuspends it on admission
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu"
    assert job.metadata.labels["kueue.x-k8s.io/priority-class"] == "research"
    assert job.spec.parallelism == job.spec.completions  # all pods one Workload, admitted whole
    for doc in rendered.to_dicts():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # Kueue's labels are on the Job only: Kueue reads them there
    assert "kueue.x-k8s.io/queue-name" not in rendered.config_map.metadata.labels
    assert "kueue.x-k8s.io/queue-name" not in job.spec.template.metadata.labels
    plain = render(stage_job(stage)).job
    assert plain.spec.suspend is None
    assert not [k for k in plain.metadata.labels if k.startswith("kueue.x-k8s.io/")]


def test_a_failed_rank_fails_the_whole_gang():
    spec = render(stage_job("rm", nodes=2)).job.spec
    assert spec.backoff_limit == 0
    rules = spec.pod_failure_policy.rules
    assert [r.action for r in rules] == ["FailJob", "FailJob"]
    assert (rules[0].on_exit_codes.operator, rules[0].on_exit_codes.values) == ("NotIn", [0])
    assert rules[1].on_pod_conditions[0].type == "DisruptionTarget"


def test_one_process_per_pod_gets_its_rank_from_the_completion_index():
    rendered = render(stage_job("dpo", nodes=3))
    env = env_of(rendered)
    assert env["WORLD_SIZE"].value == "3"
    assert env["RANK"].value_from.field_ref.field_path == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    # the launch both executors read: the local executor sets the index itself
    local = stage_launch(stage_job("dpo", nodes=3)).env_for(2, {"MASTER_ADDR": "127.0.0.1",
                                                                "MASTER_PORT": "1234"})
    assert (local["RANK"], local["NODE_RANK"], local["JOB_COMPLETION_INDEX"]) == ("2", "2", "2")
    assert (local["MASTER_ADDR"], local["WORLD_SIZE"]) == ("127.0.0.1", "3")
    assert "HOME" not in local and "TMPDIR" not in local
    assert env["HOME"].value == "/var/lib/xwin/home"
    assert env["MASTER_ADDR"].value == f"{rendered.name}-0.{rendered.name}.ml.svc"


def test_sharded_stage_runs_one_shard_per_completion_and_retries_shards_alone():
    rendered = render(stage_job("sample", shards=8, gpus=2, backoff_limit=2))
    spec = rendered.job.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism) == ("Indexed", 8, 8)
    assert spec.backoff_limit_per_index == 2 and spec.backoff_limit is None
    assert rendered.service is None and spec.template.spec.subdomain is None
    assert env_of(rendered)["XWIN_TENSOR_PARALLEL_SIZE"].value == "2"
    pod_spec = StageSpec.model_validate(yaml.safe_load(rendered.config_map.data["spec.yaml"]))
    assert pod_spec.shards == 8
    rules = spec.pod_failure_policy.rules
    assert (rules[0].action, rules[0].on_exit_codes.values) == ("FailJob", [2])
    assert rules[1].action == "Ignore"


def test_tensor_parallel_wider_than_the_pod_is_refused():
    with pytest.raises(ConfigError, match=r"sample.tensor_parallel_size=4 .* gives 2"):
        render(stage_job("sample", shards=2, gpus=2, config={"tensor_parallel_size": 4}))
    render(stage_job("sample", shards=2, gpus=2, config={"tensor_parallel_size": 2}))


def test_small_stages_are_one_plain_pod():
    rendered = render(stage_job("select"))
    spec = rendered.job.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism) == ("NonIndexed", 1, 1)
    assert rendered.service is None
    assert "nvidia.com/gpu" not in rendered.container.resources.limits


@pytest.mark.parametrize("stage", ["sft", "sample", "eval"])
def test_every_pod_is_locked_down(stage):
    rendered = render(stage_job(stage))
    pod = rendered.job.spec.template.spec
    assert pod.security_context.run_as_non_root and pod.security_context.run_as_user == 10001
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    assert pod.automount_service_account_token is False
    assert pod.restart_policy == "Never"
    sc = rendered.container.security_context
    assert sc.allow_privilege_escalation is False and sc.read_only_root_filesystem
    assert sc.capabilities.drop == ["ALL"]
    writable = {m.mount_path for m in rendered.container.volume_mounts if not m.read_only}
    assert writable == {"/var/lib/xwin", "/tmp", "/dev/shm"}
    assert rendered.job.spec.ttl_seconds_after_finished == 3600


def test_the_container_runs_exactly_the_stage_command_on_the_mounted_spec():
    rendered = render(stage_job("rm"))
    assert rendered.container_command() == ["xwin", "stage", "rm", "--config", SPEC_PATH]
    assert rendered.container_command() == stage_launch(stage_job("rm")).argv
    assert stage_launch(stage_job("rm"), "/x/spec.yaml").argv[-1] == "/x/spec.yaml"
    mount = next(m for m in rendered.container.volume_mounts if m.name == "spec")
    assert (mount.mount_path, mount.read_only) == ("/etc/xwin", True)
    volume = next(v for v in rendered.job.spec.template.spec.volumes if v.name == "spec")
    assert volume.config_map.name == rendered.config_map.metadata.name


def test_the_spec_configmap_round_trips_with_the_pod_workdir():
    job = stage_job("score", shards=4, config={"batch_size": 32})
    data = render(job).config_map.data["spec.yaml"]
    spec = StageSpec.model_validate(yaml.safe_load(data))
    assert spec.model_dump(exclude={"workdir", "shards"}) == job.spec.model_dump(
        exclude={"workdir", "shards"})
    assert str(spec.workdir) == "/var/lib/xwin/work"


def test_credentials_come_from_the_secret_and_never_appear_literally():
    rendered = render(stage_job("sft"), s3_secret="my-s3")
    refs = {e.name: e.value_from.secret_key_ref for e in rendered.container.env if e.value_from
            and e.value_from.secret_key_ref}
    assert {k: (r.name, r.key) for k, r in refs.items()} == {
        "AWS_ACCESS_KEY_ID": ("my-s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": ("my-s3", "AWS_SECRET_ACCESS_KEY")}
    text = rendered.to_yaml()
    assert "AWS_SECRET_ACCESS_KEY" not in " ".join(rendered.container_command())
    assert "secretKeyRef" in text
    local_store = render(stage_job("sft", store=StoreConfig()))
    assert not [e for e in local_store.container.env if e.value_from and e.value_from.secret_key_ref]


def test_labels_tie_every_object_to_run_stage_and_attempt():
    rendered = render(stage_job("sft", run_id="My Run/2025", attempt=3), labels={"team": "a"})
    expected = {"app.kubernetes.io/name": "xwin", "xwin.dev/run": run_label("My Run/2025"),
                "xwin.dev/stage": "sft", "xwin.dev/attempt": "3", "team": "a"}
    for obj in [*rendered.objects(), rendered.job.spec.template]:
        assert expected.items() <= obj.metadata.labels.items()
    assert rendered.job.spec.template.metadata.annotations["xwin.dev/run-id"] == "My Run/2025"


@pytest.mark.parametrize("run_id", ["r", "xwin-7b-20260101-120000", "A" * 200, "run_2025.01/x",
                                    "9lives"])
def test_names_are_valid_dns_labels_with_room_for_the_pod_index(run_id):
    for stage in ("annotate", "sft"):
        name = job_name(run_id, stage, 12)
        assert DNS_1035.match(name) and len(name) <= 52
        assert name.endswith(f"-{stage}-12")
    label = run_label(run_id)
    assert re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", label) and len(label) <= 63


def test_distinct_long_run_ids_get_distinct_names():
    a, b = "x" * 100 + "a", "x" * 100 + "b"
    assert job_name(a, "sft", 1) != job_name(b, "sft", 1)
    assert run_label(a) != run_label(b)
    assert run_label("Run-1") != run_label("run-1")  # label values are case-sensitive ids


def test_a_bad_toleration_names_the_stage_and_key():
    with pytest.raises(ConfigError, match=r"profile sft: .*unknown key\(s\) tolerationSecs"):
        render(stage_job("sft", tolerations=[{"key": "a", "tolerationSecs": 3}]))


def test_a_profile_secret_env_is_a_secret_key_ref_and_its_value_is_nowhere_in_the_objects():
    rendered = render(stage_job("eval", secret_env={
        "XWIN_JUDGE_API_KEY": {"secret": "judge", "key": "api-key"},
        "HF_TOKEN": {"secret": "hf", "key": "token", "optional": True}}))
    env = env_of(rendered)
    judge, hf = env["XWIN_JUDGE_API_KEY"], env["HF_TOKEN"]
    assert judge.value is None and hf.value is None
    ref = judge.value_from.secret_key_ref
    assert (ref.name, ref.key, ref.optional) == ("judge", "api-key", None)
    ref = hf.value_from.secret_key_ref
    assert (ref.name, ref.key, ref.optional) == ("hf", "token", True)
    for doc in rendered.to_dicts():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # the ConfigMap (the stage spec) carries the variable's name at most, never a value
    assert "XWIN_JUDGE_API_KEY" not in rendered.config_map.data["spec.yaml"]
