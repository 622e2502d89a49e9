"""A stage attempt as Kubernetes objects, built from the client's typed models (a wrong field
fails here, in Python, not in the cluster): a ConfigMap with the stage spec, a Job running
`xwin stage NAME --config /etc/xwin/spec.yaml`, and for training gangs a headless Service.

    training (kind train):  Indexed Job, completions = parallelism = nodes, rank from
                            JOB_COMPLETION_INDEX, rendezvous at `<job>-0.<job>.<ns>.svc`; any
                            failed pod fails the whole Job (a rank cannot restart alone).
    sample/score (sharded): Indexed Job, one shard per completion index.
    the rest (single):      one small pod.

A multi-node gang also gets a NetworkPolicy: its pods accept ingress only from pods of the
same Job (any port: the rendezvous and NCCL's ephemeral ones), nothing from elsewhere. Egress
is left open (the policy has no Egress type): the pods reach the object store, the image
registry and DNS. The policy only takes effect where the cluster's network plugin enforces
NetworkPolicies (Calico, Cilium ...); elsewhere it is inert and nothing breaks.

Kueue (`executor.kubernetes.queue`): every Job is labelled with the LocalQueue and created with
`spec.suspend: true`; Kueue unsuspends it once the whole Job fits the queue's quota. All pods of
an Indexed Job are one Workload (one pod set of `parallelism` pods; parallelism = completions =
nodes), so a gang is admitted all or nothing. Admitted quota is not yet running pods: with
`waitForPodsReady` enabled in Kueue's Configuration, a gang that is admitted but cannot get all
its pods Ready in time is evicted and requeued instead of holding GPUs half-started.
Plain Indexed Jobs, not JobSets: Kueue already admits an Indexed Job as one gang, and one Job
per stage keeps the objects, the RBAC and the failure handling as they are without Kueue.

The container's command, environment and completions come from the stage's launch description
(`xwin.executors.launch`), which the local executor runs as processes on 127.0.0.1: both
executors start stages the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from xwin.core.errors import EXIT_USER_ERROR, ConfigError
from xwin.executors.base import StageJob
from xwin.executors.kubernetes.naming import (
    ANNOTATION_RUN_ID,
    COMPLETION_INDEX_ANNOTATION,
    JOB_NAME_LABEL,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    job_name,
    master_addr,
    stage_labels,
)
from xwin.executors.kubernetes.settings import KubernetesConfig
from xwin.executors.launch import SPEC_PATH, Launch, stage_launch
from xwin.executors.profiles import JobProfile, SecretEnv

SPEC_DIR = str(Path(SPEC_PATH).parent)
DATA_DIR = "/var/lib/xwin"  # the writable emptyDir: workdir, home, caches
CONTAINER = "stage"

# Where the pod's filesystem differs from a local machine's.
POD_FILESYSTEM_ENV = {
    "HOME": f"{DATA_DIR}/home",
    "XDG_CACHE_HOME": f"{DATA_DIR}/cache",
    "HF_HOME": f"{DATA_DIR}/cache/huggingface",
    "TRITON_CACHE_DIR": f"{DATA_DIR}/cache/triton",
    "TMPDIR": "/tmp",
}

_serializer: k8s.ApiClient | None = None


def to_dict(obj: Any) -> Any:
    """A typed model as the API's JSON form (camelCase keys, no nulls)."""
    global _serializer
    if _serializer is None:
        _serializer = k8s.ApiClient()
    return _serializer.sanitize_for_serialization(obj)


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (the stage spec in its ConfigMap) as readable `|` blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_ManifestDumper.add_representer(str, _str_representer)


def dump_manifests(docs: list[dict[str, Any]]) -> str:
    """Manifests as one multi-document YAML stream (for `kubectl apply -f -`)."""
    return yaml.dump_all(docs, Dumper=_ManifestDumper, sort_keys=False)


@dataclass
class RenderedStage:
    """The objects of one stage attempt, in the order they are applied."""

    job: k8s.V1Job
    config_map: k8s.V1ConfigMap
    service: k8s.V1Service | None = None
    network_policy: k8s.V1NetworkPolicy | None = None

    @property
    def name(self) -> str:
        return self.job.metadata.name

    @property
    def namespace(self) -> str:
        return self.job.metadata.namespace

    def objects(self) -> list[Any]:
        return [o for o in (self.config_map, self.service, self.network_policy, self.job)
                if o is not None]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [to_dict(o) for o in self.objects()]

    def to_yaml(self) -> str:
        return dump_manifests(self.to_dicts())

    @property
    def container(self) -> k8s.V1Container:
        return self.job.spec.template.spec.containers[0]

    def container_command(self) -> list[str]:
        """The container's argv."""
        return list(self.container.command) + list(self.container.args or [])


def render_stage(job: StageJob, settings: Any, namespace: str | None = None) -> RenderedStage:
    """The Kubernetes objects of one stage attempt.

    settings: the pipeline's `executor` section (ExecutorConfig: namespace + its `kubernetes`
    settings), or a KubernetesConfig with `namespace` given."""
    if isinstance(settings, KubernetesConfig):
        kube, ns = settings, namespace or "default"
    else:
        kube, ns = settings.kubernetes, namespace or settings.namespace
    profile = job.profile
    _check_tensor_parallel(job)
    name = job_name(job.run_id, job.stage, job.attempt)
    labels = {**kube.labels, **stage_labels(job.run_id, job.stage, job.attempt)}
    annotations = {ANNOTATION_RUN_ID: job.run_id, "xwin.dev/config-digest": job.spec.config_digest}
    launch = stage_launch(job)
    completions = launch.completions

    # The pod sees its spec with the pod's own workdir and shard count.
    spec = job.spec.model_copy(update={"workdir": Path(f"{DATA_DIR}/work")})
    if profile.kind == "sharded":
        spec = spec.model_copy(update={"shards": completions})
    config_map = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=k8s.V1ObjectMeta(name=name, namespace=ns, labels=labels, annotations=annotations),
        data={"spec.yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)},
        immutable=True,
    )

    service = None
    env = _env(job, launch, kube, name, ns)
    if profile.kind == "train":
        service = k8s.V1Service(
            api_version="v1",
            kind="Service",
            metadata=k8s.V1ObjectMeta(name=name, namespace=ns, labels=labels),
            spec=k8s.V1ServiceSpec(
                cluster_ip="None",  # headless: one DNS record per pod, no load balancing
                selector={JOB_NAME_LABEL: name},
                # rank 0 must resolve before it is Ready, or the other ranks cannot rendezvous
                publish_not_ready_addresses=True,
                ports=[k8s.V1ServicePort(name="rendezvous", port=kube.master_port,
                                         target_port=kube.master_port)],
            ),
        )

    network_policy = None
    if profile.kind == "train" and completions > 1:
        network_policy = _gang_network_policy(name, ns, labels)

    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(
            labels=labels, annotations={**kube.annotations, ANNOTATION_RUN_ID: job.run_id}
        ),
        spec=_pod_spec(job, launch, kube, name, env),
    )
    job_obj = k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=name, namespace=ns, labels={**labels, **_kueue_labels(kube)},
                                  annotations=annotations),
        spec=k8s.V1JobSpec(
            # Kueue's to start: it unsuspends the Job once the whole gang fits the quota
            suspend=True if kube.queue else None,
            completions=completions,
            parallelism=completions,
            completion_mode="NonIndexed" if profile.kind == "single" else "Indexed",
            ttl_seconds_after_finished=profile.ttl_after_finished_s,
            active_deadline_seconds=profile.active_deadline_s,
            pod_failure_policy=_pod_failure_policy(profile),
            template=pod,
            **_backoff(profile),
        ),
    )
    return RenderedStage(job=job_obj, config_map=config_map, service=service,
                         network_policy=network_policy)


def _kueue_labels(kube: KubernetesConfig) -> dict[str, str]:
    """The Job's LocalQueue and WorkloadPriorityClass, where Kueue reads them."""
    labels = {}
    if kube.queue:
        labels[KUEUE_QUEUE_LABEL] = kube.queue
    if kube.priority_class:
        labels[KUEUE_PRIORITY_LABEL] = kube.priority_class
    return labels


def _gang_network_policy(name: str, ns: str, labels: dict[str, str]) -> k8s.V1NetworkPolicy:
    """Ingress to the gang's pods only from the gang's pods, on any port; egress untouched.
    Pods are selected by the label the Job controller puts on every pod of Job `name`."""
    gang = k8s.V1LabelSelector(match_labels={JOB_NAME_LABEL: name})
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=k8s.V1ObjectMeta(name=name, namespace=ns, labels=labels),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=gang,
            policy_types=["Ingress"],  # no "Egress": the pods still reach S3, DNS, registries
            ingress=[k8s.V1NetworkPolicyIngressRule(_from=[k8s.V1NetworkPolicyPeer(pod_selector=gang)])],
        ),
    )


def _check_tensor_parallel(job: StageJob) -> None:
    """A model split over more GPUs than the pod has would fail only once scheduled."""
    def sizes(node: Any, path: str):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "tensor_parallel_size" and isinstance(value, int):
                    yield f"{path}{key}", value
                else:
                    yield from sizes(value, f"{path}{key}.")

    gpus = job.profile.gpus
    for path, size in sizes(job.spec.config, f"{job.stage}."):
        if gpus and size > gpus:
            raise ConfigError(f"{path}={size} needs {size} GPUs in one pod; the {job.stage} "
                              f"profile gives {gpus} (executor.profiles.{job.stage}.gpus)")


def _backoff(profile: JobProfile) -> dict[str, int]:
    if profile.kind == "sharded":
        # A failed shard retries alone; the others keep their progress.
        return {"backoff_limit_per_index": profile.backoff_limit}
    return {"backoff_limit": profile.backoff_limit}


def _pod_failure_policy(profile: JobProfile) -> k8s.V1PodFailurePolicy:
    if profile.kind == "train":
        # A gang fails together: a rank restarted alone cannot rejoin the collective, so any
        # failed or evicted pod fails the Job and the controller retries the whole stage.
        rules = [
            k8s.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=CONTAINER, operator="NotIn", values=[0]
                ),
            ),
            k8s.V1PodFailurePolicyRule(
                action="FailJob",
                on_pod_conditions=[
                    k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                ],
            ),
        ]
    else:
        rules = [
            # Bad config or data: no retry can help.
            k8s.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=CONTAINER, operator="In", values=[EXIT_USER_ERROR]
                ),
            ),
            # Preemption or node drain is not the stage's fault: retry without counting it.
            k8s.V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[
                    k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                ],
            ),
        ]
    return k8s.V1PodFailurePolicy(rules=rules)


def _env(job: StageJob, launch: Launch, kube: KubernetesConfig, name: str, ns: str) -> list[k8s.V1EnvVar]:
    """The launch's literal environment, the pod's filesystem, pod 0's DNS name as the rendezvous,
    the completion index through the downward API, and credentials from Secrets: the store's,
    and the profile's `secret_env` (e.g. the judge's API key). A secret's value never appears
    in the rendered objects, only the Secret's name and key."""
    values = {**launch.env, **POD_FILESYSTEM_ENV}
    if launch.rendezvous:
        values.update(MASTER_ADDR=master_addr(name, ns), MASTER_PORT=str(kube.master_port))
    values.update(launch.user_env)
    env = [k8s.V1EnvVar(name=k, value=v) for k, v in values.items()]
    env += [_completion_index_env(k) for k in launch.rank_vars]
    if job.spec.store.kind == "s3":
        env += [
            k8s.V1EnvVar(
                name=var,
                value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name=kube.s3_secret, key=key)
                ),
            )
            for var, key in kube.s3_secret_keys.items()
        ]
    env += [_secret_env(var, ref) for var, ref in job.profile.secret_env.items()]
    return env


def _secret_env(name: str, ref: SecretEnv) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(
        name=ref.secret, key=ref.key, optional=ref.optional or None)))


def _completion_index_env(name: str) -> k8s.V1EnvVar:
    """A variable holding the pod's completion index (the downward API's view of the
    annotation the Job controller sets on every pod of an Indexed Job)."""
    return k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
        field_ref=k8s.V1ObjectFieldSelector(field_path=f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']")))


def _pod_spec(job: StageJob, launch: Launch, kube: KubernetesConfig, name: str,
              env: list[k8s.V1EnvVar]) -> k8s.V1PodSpec:
    profile = job.profile
    requests = {"cpu": profile.cpu, "memory": profile.memory}
    limits = {"memory": profile.memory}  # no CPU limit: throttling only slows a batch job
    if profile.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(profile.gpus)
    container = k8s.V1Container(
        name=CONTAINER,
        image=profile.image,
        image_pull_policy=kube.image_pull_policy,
        command=launch.argv[:3],  # xwin stage NAME
        args=launch.argv[3:],
        working_dir=DATA_DIR,
        env=env,
        resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        ports=[k8s.V1ContainerPort(name="rendezvous", container_port=kube.master_port)]
        if profile.kind == "train" else None,
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=kube.read_only_root_filesystem,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[
            k8s.V1VolumeMount(name="spec", mount_path=SPEC_DIR, read_only=True),
            k8s.V1VolumeMount(name="data", mount_path=DATA_DIR),
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
            k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"),
        ],
    )
    volumes = [
        k8s.V1Volume(name="spec", config_map=k8s.V1ConfigMapVolumeSource(
            name=name, items=[k8s.V1KeyToPath(key="spec.yaml", path="spec.yaml")])),
        k8s.V1Volume(name="data", empty_dir=k8s.V1EmptyDirVolumeSource(
            size_limit=kube.work_volume_size)),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
        # The container runtime's 64 MiB /dev/shm starves NCCL and DataLoader workers.
        k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=profile.shm_size or "1Gi")),
    ]
    return k8s.V1PodSpec(
        restart_policy="Never",  # the Job, not the kubelet, decides about retries
        subdomain=name if profile.kind == "train" else None,
        service_account_name=kube.service_account,
        automount_service_account_token=False,
        enable_service_links=False,
        priority_class_name=profile.priority_class,
        node_selector=profile.node_selector or None,
        tolerations=[_toleration(t, job.stage) for t in profile.tolerations] or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in kube.image_pull_secrets]
        or None,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=kube.run_as_user,
            run_as_group=kube.run_as_user,
            fs_group=kube.run_as_user,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        containers=[container],
        volumes=volumes,
    )


def _toleration(data: dict[str, Any], stage: str) -> k8s.V1Toleration:
    """A profile's toleration (the API's camelCase keys) as the typed model."""
    by_json_key = {json_key: attr for attr, json_key in k8s.V1Toleration.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json_key))
    if unknown:
        raise ConfigError(
            f"profile {stage}: toleration {data}: unknown key(s) {', '.join(unknown)}; "
            f"expected {', '.join(sorted(by_json_key))}"
        )
    return k8s.V1Toleration(**{by_json_key[k]: v for k, v in data.items()})
