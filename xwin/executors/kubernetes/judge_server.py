"""The judge server on Kubernetes: an eval or annotate stage whose judge has no `base_url` gets a
vLLM OpenAI-compatible server for the judge model, run by the controller for the stage's time.

    Deployment  one pod: an init container fetches the judge model from the store (`xwin
                artifacts get`, checked against its manifest) into an emptyDir, then vLLM serves
                it on port 8000; Ready once `/health` answers. Its resources, image and
                scheduling are the `judge-server` profile's (jobs/judge-server.yaml,
                executor.profiles.judge-server); its vLLM flags the stage's `judge.server`.
    Service     ClusterIP in front of it: the stage gets `http://<name>.<ns>.svc:8000/v1` as its
                `judge.base_url` (in the spec of its ConfigMap).
    NetworkPolicy  the server accepts traffic only from the run's stage pods (same run label),
                on its port. Egress is left open (no Egress policy type): the init container
                reaches the object store, the pod its image registry and DNS. It takes effect
                only where the network plugin enforces NetworkPolicies.

Lifecycle (`JudgeServers`, used by the executor): before the stage's Job is created, the server
is found by its labels (a resumed run adopts the one its predecessor made, never a second) or
created, and waited for until it has an available replica; while it waits, a pod that cannot
pull its image or be scheduled is reported as the stage's problem, and given up on after the
same grace times as stage pods. The server is deleted when the stage ends: succeeded, failed,
cancelled (`cancel` deletes every judge server of the run).

Under Kueue only the stage's Job is queued: the server is a plain Deployment, started before
the Job and holding its GPUs while the Job waits for quota (give the judge-server profile a
node pool outside the queue's quota, or an endpoint as judge.base_url).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from xwin.core.errors import ConfigError
from xwin.executors.base import StageJob
from xwin.executors.kubernetes import diagnose
from xwin.executors.kubernetes.naming import (
    ANNOTATION_RUN_ID,
    LABEL_APP,
    LABEL_COMPONENT,
    LABEL_RUN,
    judge_server_labels,
    judge_server_name,
    run_label,
)
from xwin.executors.kubernetes.render import (
    DATA_DIR,
    POD_FILESYSTEM_ENV,
    _toleration,
    render_stage,
    to_dict,
)
from xwin.executors.kubernetes.settings import KubernetesConfig
from xwin.executors.kubernetes.watch import call
from xwin.executors.profiles import JUDGE_SERVER, JobProfile
from xwin.judge.config import JudgeConfig, LocalServerConfig, vllm_server_flags

log = logging.getLogger(__name__)

JUDGE_STAGES = ("eval", "annotate")
SERVER_CONTAINER = "judge-server"
FETCH_CONTAINER = "fetch-model"
PORT = 8000
MODEL_DIR = f"{DATA_DIR}/judge-model"
CRASH_RESTARTS = 2  # a server container that crashed this often will not come up by itself


@dataclass(frozen=True)
class JudgeToServe:
    """The judge model a stage needs served: an artifact of the store (`key`, optionally a
    folder `inside` it), or a folder already in the image (`image_path`)."""

    served_name: str
    server: LocalServerConfig
    key: str | None = None
    inside: str = ""
    image_path: str | None = None

    @property
    def model_path(self) -> str:
        """Where the server container finds the model."""
        if self.key is None:
            return str(self.image_path)
        return f"{MODEL_DIR}/{self.inside}".rstrip("/")


def judge_to_serve(job: StageJob) -> JudgeToServe | None:
    """The judge model of `job` if it asks for a local server, else None: the stage is no judged
    one, its judge is an endpoint (`judge.base_url`), no judge model is given, or the stage's
    settings judge nothing (eval without MT-bench or AlpacaEval, annotate's verifiable method
    with `verifiable_ties: drop`): as in the stages themselves, where no server starts then."""
    if job.stage not in JUDGE_STAGES:
        return None
    section = job.spec.config
    try:
        judge = JudgeConfig.model_validate(section.get("judge") or {})
    except ValueError as e:  # pydantic's ValidationError; the controller checked it already
        raise ConfigError(f"{job.stage}.judge: {e}") from e
    if judge.base_url:
        return None
    if job.stage == "eval":
        mtbench = (section.get("mtbench") or {}).get("enabled", True)
        if not (mtbench or "alpaca" in job.spec.inputs):
            return None
    elif section.get("method") == "verifiable" and section.get("verifiable_ties") == "drop":
        return None
    ref = job.spec.inputs.get("judge")
    if ref is not None:
        key, _, inside = ref.partition("#")
        name = judge.model or Path(ref.replace("#", "/")).name
        return JudgeToServe(served_name=name, server=judge.server, key=key, inside=inside.strip("/"))
    if judge.model_path:
        return JudgeToServe(served_name=judge.model or Path(judge.model_path).name,
                            server=judge.server, image_path=judge.model_path)
    return None


def with_judge_endpoint(job: StageJob, base_url: str, served_name: str) -> StageJob:
    """`job` with its judge pointed at the served endpoint: the stage calls it as any OpenAI-
    compatible one (the served name as `judge.model`, no API key: the NetworkPolicy admits
    only the run's pods)."""
    config = dict(job.spec.config)
    config["judge"] = {**(config.get("judge") or {}), "base_url": base_url,
                       "model": served_name, "api_key_env": None}
    spec = job.spec.model_copy(update={"config": config})
    return job.model_copy(update={"spec": spec})


# -- the objects ----------------------------------------------------------------------------------


@dataclass
class RenderedJudgeServer:
    """The judge server's objects, in the order they are applied."""

    deployment: k8s.V1Deployment
    service: k8s.V1Service
    network_policy: k8s.V1NetworkPolicy

    @property
    def name(self) -> str:
        return self.deployment.metadata.name

    @property
    def namespace(self) -> str:
        return self.deployment.metadata.namespace

    @property
    def base_url(self) -> str:
        """The Service's address, as the stage pods resolve it."""
        return f"http://{self.name}.{self.namespace}.svc:{PORT}/v1"

    def objects(self) -> list[Any]:
        return [self.network_policy, self.service, self.deployment]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [to_dict(o) for o in self.objects()]


def render_judge_server(job: StageJob, judge: JudgeToServe, profile: JobProfile,
                        kube: KubernetesConfig, namespace: str) -> RenderedJudgeServer:
    """The Deployment, Service and NetworkPolicy of the judge server `job` uses."""
    name = judge_server_name(job.run_id, job.stage)
    selector = judge_server_labels(job.run_id, job.stage)
    labels = {**kube.labels, **selector}
    annotations = {ANNOTATION_RUN_ID: job.run_id}

    def meta() -> k8s.V1ObjectMeta:
        return k8s.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels),
                                annotations=dict(annotations))

    deployment = k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=meta(),
        spec=k8s.V1DeploymentSpec(
            replicas=1,
            # never two servers at once: a second would wait for the first one's GPUs
            strategy=k8s.V1DeploymentStrategy(type="Recreate"),
            selector=k8s.V1LabelSelector(match_labels=selector),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels,
                                          annotations={**kube.annotations, **annotations}),
                spec=_pod_spec(job, judge, profile, kube),
            ),
        ),
    )
    service = k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=meta(),
        spec=k8s.V1ServiceSpec(
            type="ClusterIP",
            selector=selector,
            ports=[k8s.V1ServicePort(name="http", port=PORT, target_port="http", protocol="TCP")],
        ),
    )
    network_policy = k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=meta(),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels=selector),
            policy_types=["Ingress"],  # no "Egress": the model is fetched from the store
            ingress=[k8s.V1NetworkPolicyIngressRule(
                _from=[k8s.V1NetworkPolicyPeer(pod_selector=k8s.V1LabelSelector(match_labels={
                    LABEL_APP: "xwin", LABEL_COMPONENT: "stage",
                    LABEL_RUN: run_label(job.run_id)}))],
                ports=[k8s.V1NetworkPolicyPort(port=PORT, protocol="TCP")],
            )],
        ),
    )
    return RenderedJudgeServer(deployment, service, network_policy)


def _server_args(judge: JudgeToServe, profile: JobProfile) -> list[str]:
    """vLLM's OpenAI server on all of the pod's addresses. dtype auto: vLLM's own choice on a
    GPU (the model's dtype), float32 on a CPU pod (what xwin's auto picks for a local CPU)."""
    dtype = judge.server.dtype
    if dtype == "auto" and not profile.gpus:
        dtype = "float32"
    args = ["-m", "vllm.entrypoints.openai.api_server", "--model", judge.model_path,
            "--host", "0.0.0.0", "--port", str(PORT),
            *vllm_server_flags(judge.served_name, judge.server, dtype)]
    if profile.gpus > 1:
        args += ["--tensor-parallel-size", str(profile.gpus)]
    return args


def _security_context(kube: KubernetesConfig) -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=kube.read_only_root_filesystem,
        run_as_non_root=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


def _pod_spec(job: StageJob, judge: JudgeToServe, profile: JobProfile,
              kube: KubernetesConfig) -> k8s.V1PodSpec:
    requests = {"cpu": profile.cpu, "memory": profile.memory}
    limits = {"memory": profile.memory}  # no CPU limit: throttling only slows the server
    if profile.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(profile.gpus)
    mounts = [k8s.V1VolumeMount(name="data", mount_path=DATA_DIR),
              k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    filesystem_env = [k8s.V1EnvVar(name=k, value=v) for k, v in POD_FILESYSTEM_ENV.items()]
    server = k8s.V1Container(
        name=SERVER_CONTAINER,
        image=profile.image,
        image_pull_policy=kube.image_pull_policy,
        command=["python"],
        args=_server_args(judge, profile),
        working_dir=DATA_DIR,
        env=filesystem_env + [k8s.V1EnvVar(name=k, value=v) for k, v in profile.env.items()],
        ports=[k8s.V1ContainerPort(name="http", container_port=PORT, protocol="TCP")],
        # Ready = the engine is up; a large model loads for minutes, which readiness (not
        # liveness) waits out without restarting the pod.
        readiness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/health", port="http"),
            period_seconds=5, failure_threshold=3, timeout_seconds=5),
        resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        security_context=_security_context(kube),
        volume_mounts=[*mounts, k8s.V1VolumeMount(name="shm", mount_path="/dev/shm")],
    )
    init = []
    if judge.key is not None:
        store = job.spec.store.model_dump(mode="json", exclude={"root"}, exclude_none=True)
        init.append(k8s.V1Container(
            name=FETCH_CONTAINER,
            image=profile.image,
            image_pull_policy=kube.image_pull_policy,
            # the store section as JSON in XWIN_STORE (it holds no secret: the credentials
            # come from the Secret, as in the stage pods)
            command=["xwin", "artifacts", "get", judge.key, "--dest", MODEL_DIR],
            working_dir=DATA_DIR,
            env=filesystem_env + [k8s.V1EnvVar(name="XWIN_STORE", value=json.dumps(store, sort_keys=True))]
            + [k8s.V1EnvVar(name=var, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=kube.s3_secret, key=key)))
               for var, key in kube.s3_secret_keys.items()],
            resources=k8s.V1ResourceRequirements(requests={"cpu": "1", "memory": "2Gi"},
                                                 limits={"memory": "2Gi"}),
            security_context=_security_context(kube),
            volume_mounts=mounts,
        ))
    return k8s.V1PodSpec(
        service_account_name=kube.service_account,
        automount_service_account_token=False,  # the server never talks to the API
        enable_service_links=False,
        priority_class_name=profile.priority_class,
        node_selector=profile.node_selector or None,
        tolerations=[_toleration(t, JUDGE_SERVER) for t in profile.tolerations] or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in kube.image_pull_secrets]
        or None,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=kube.run_as_user, run_as_group=kube.run_as_user,
            fs_group=kube.run_as_user, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        init_containers=init or None,
        containers=[server],
        volumes=[
            k8s.V1Volume(name="data", empty_dir=k8s.V1EmptyDirVolumeSource(
                size_limit=kube.work_volume_size)),
            k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
            k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(
                medium="Memory", size_limit=profile.shm_size or "1Gi")),
        ],
    )


def stage_manifests(job: StageJob, executor: Any, namespace: str,
                    judge_profile: JobProfile) -> list[dict[str, Any]]:
    """What `xwin render` shows of one stage: its judge server's objects when it gets one
    (before the stage's, as the executor applies them), then the stage's objects, its spec
    pointing at the server. executor: the pipeline's `executor` section."""
    docs: list[dict[str, Any]] = []
    if (judge := judge_to_serve(job)) is not None:
        server = render_judge_server(job, judge, judge_profile, executor.kubernetes, namespace)
        docs += server.to_dicts()
        job = with_judge_endpoint(job, server.base_url, judge.served_name)
    return docs + render_stage(job, executor, namespace).to_dicts()


# -- the lifecycle --------------------------------------------------------------------------------


class JudgeServerError(RuntimeError):
    """The judge server did not become ready; the message says why (the pod's reason)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class JudgeServers:
    """Creates (or adopts), waits for and deletes the judge servers of stages, through the
    executor's API clients."""

    def __init__(self, namespace: str, settings: KubernetesConfig, profile: JobProfile,
                 api_client: k8s.ApiClient, poll_s: float = 2.0):
        self.namespace = namespace
        self.settings = settings
        self.profile = profile
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.networking = k8s.NetworkingV1Api(api_client)
        self.poll_s = poll_s

    def render(self, job: StageJob, judge: JudgeToServe) -> RenderedJudgeServer:
        return render_judge_server(job, judge, self.profile, self.settings, self.namespace)

    def ensure(self, job: StageJob, judge: JudgeToServe) -> RenderedJudgeServer:
        """The server's objects exist: an existing Deployment of the run and stage (found by its
        labels) is adopted, else one is created; the Service and NetworkPolicy are created
        where missing. The policy goes first, so the server is never open."""
        rendered = self.render(job, judge)
        selector = ",".join(f"{k}={v}" for k, v in judge_server_labels(job.run_id, job.stage).items())
        found = call(self.apps.list_namespaced_deployment, self.namespace,
                     label_selector=selector).items
        if any(d.metadata.deletion_timestamp for d in found):
            # the server of an attempt that just ended is still going away: a retry gets a
            # fresh one, not the one being deleted
            self._wait_gone(rendered.name)
            found = []
        for obj, create in ((rendered.network_policy,
                             self.networking.create_namespaced_network_policy),
                            (rendered.service, self.core.create_namespaced_service)):
            _create_if_missing(create, self.namespace, obj)
        if found:
            log.info("%s: adopting judge server %s/%s", job.stage, self.namespace,
                     found[0].metadata.name)
        elif _create_if_missing(self.apps.create_namespaced_deployment, self.namespace,
                                rendered.deployment):
            log.info("%s: created judge server %s/%s for %s", job.stage, self.namespace,
                     rendered.name, judge.served_name)
        return rendered

    def _wait_gone(self, name: str, timeout_s: float = 300.0) -> None:
        """Until Deployment and Service `name` are deleted (a Foreground delete waits for the
        pods), so that the new ones are not taken for them."""
        deadline = time.monotonic() + timeout_s
        for read in (self.apps.read_namespaced_deployment, self.core.read_namespaced_service):
            while True:
                try:
                    call(read, name, self.namespace)
                except ApiException as e:
                    if e.status == 404:
                        break
                    raise
                if time.monotonic() >= deadline:
                    raise JudgeServerError(f"judge server {self.namespace}/{name}: the previous "
                                           f"one is still being deleted after {timeout_s:.0f} s")
                time.sleep(self.poll_s)

    def wait_ready(self, job: StageJob, name: str, timeout_s: float,
                   on_problem: Callable[[str], None] | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Wait until Deployment `name` has an available replica. False: cancelled meanwhile.
        Raises JudgeServerError when it is gone, cannot start (image, scheduling, crashes past
        the grace times) or is not ready within timeout_s."""
        started = time.monotonic()
        stuck_since: dict[tuple[str, str], float] = {}
        while True:
            if cancelled():
                return False
            try:
                deployment = call(self.apps.read_namespaced_deployment, name, self.namespace)
            except ApiException as e:
                if e.status == 404 and cancelled():  # `cancel` deleted it
                    return False
                if e.status == 404:
                    raise JudgeServerError(f"judge server {self.namespace}/{name} was deleted") from e
                raise
            if (deployment.status and deployment.status.available_replicas or 0) >= 1:
                log.info("%s: judge server %s ready in %.0f s", job.stage, name,
                         time.monotonic() - started)
                return True
            self._check_pods(job, name, stuck_since, on_problem)
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise JudgeServerError(f"judge server {self.namespace}/{name} not ready after "
                                       f"{waited:.0f} s (judge.server.startup_timeout_s)")
            time.sleep(self.poll_s)

    def _check_pods(self, job: StageJob, name: str, stuck_since: dict[tuple[str, str], float],
                    on_problem: Callable[[str], None] | None) -> None:
        """Report each new reason a server pod is not starting; give up as for stage pods."""
        selector = ",".join(f"{k}={v}" for k, v in judge_server_labels(job.run_id, job.stage).items())
        now = time.monotonic()
        for pod in call(self.core.list_namespaced_pod, self.namespace, label_selector=selector).items:
            problem = server_pod_problem(pod)
            if problem is None:
                continue
            key = (problem.pod, problem.reason)
            if key not in stuck_since:
                stuck_since[key] = now
                problem = self._with_events(problem)
                message = f"judge server {name}: {problem.describe()}"
                log.warning("%s: %s", job.stage, message)
                if on_problem is not None:
                    on_problem(message)
            if problem.failed:
                limit: float | None = 0.0
            elif problem.reason == "Unschedulable":
                limit = self.settings.unschedulable_timeout_s
            else:
                limit = self.settings.image_pull_grace_s
            if limit is not None and now - stuck_since[key] >= limit:
                problem = self._with_events(problem)
                raise JudgeServerError(f"judge server {name}: {problem.describe()}",
                                       permanent=problem.permanent)

    def _with_events(self, problem: diagnose.PodProblem) -> diagnose.PodProblem:
        try:
            events = call(self.core.list_namespaced_event, self.namespace,
                          field_selector=f"involvedObject.name={problem.pod}").items
        except ApiException:  # events are a nicety; RBAC may not grant them
            return problem
        return diagnose.with_event_detail(problem, events)

    def delete(self, run_id: str, stage: str) -> None:
        """The stage's Deployment (its pods with it), Service and NetworkPolicy; gone ones are
        no error."""
        self._delete_named(judge_server_name(run_id, stage))

    def delete_run(self, run_id: str) -> None:
        """Every judge server of the run (`xwin cancel`)."""
        selector = f"{LABEL_APP}=xwin,{LABEL_COMPONENT}=judge-server,{LABEL_RUN}={run_label(run_id)}"
        for found in call(self.apps.list_namespaced_deployment, self.namespace,
                          label_selector=selector).items:
            self._delete_named(found.metadata.name)

    def _delete_named(self, name: str) -> None:
        """Deployment first (Foreground: its ReplicaSet and pod go before it), then the
        Service and NetworkPolicy, which have no dependents."""
        for delete, policy in ((self.apps.delete_namespaced_deployment, "Foreground"),
                               (self.core.delete_namespaced_service, "Background"),
                               (self.networking.delete_namespaced_network_policy, "Background")):
            try:
                call(delete, name, self.namespace,
                     body=k8s.V1DeleteOptions(propagation_policy=policy))
            except ApiException as e:
                if e.status != 404:
                    raise


def _create_if_missing(create: Callable[..., Any], namespace: str, obj: Any) -> bool:
    """True: created; False: it existed already (409)."""
    try:
        call(create, namespace, obj)
        return True
    except ApiException as e:
        if e.status != 409:
            raise
        return False


def server_pod_problem(pod: k8s.V1Pod) -> diagnose.PodProblem | None:
    """Why a judge server pod is not serving: what stops a stage pod (image pull, scheduling,
    a bad spec), or a container (the model fetch or vLLM) that keeps crashing: a Deployment
    restarts it in place, so the crash shows as CrashLoopBackOff with its last exit code."""
    status = pod.status or k8s.V1PodStatus()
    statuses = [*(status.init_container_statuses or []), *(status.container_statuses or [])]
    for cs in statuses:
        waiting = cs.state.waiting if cs.state else None
        if waiting is None:
            continue
        if waiting.reason in diagnose.IMAGE_PULL_REASONS or waiting.reason in diagnose.CONFIG_REASONS:
            return diagnose.PodProblem(pod.metadata.name, waiting.reason, waiting.message or "",
                                       permanent=True)
        if waiting.reason == "CrashLoopBackOff" and (cs.restart_count or 0) >= CRASH_RESTARTS:
            last = cs.last_state.terminated if cs.last_state else None
            detail = f"container {cs.name} crashed {cs.restart_count} times"
            if last is not None:
                detail += f", last exit code {last.exit_code}" + (f" ({last.reason})" if last.reason else "")
            return diagnose.PodProblem(pod.metadata.name, "CrashLoopBackOff", detail, failed=True)
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return diagnose.PodProblem(pod.metadata.name, "Unschedulable", cond.message or "")
    return None
