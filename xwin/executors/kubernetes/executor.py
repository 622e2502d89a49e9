"""The Kubernetes executor: each stage attempt becomes the objects `render_stage` builds,
created through the official client and followed with a resumable watch until the Job ends.

- Failure reasons come from the pods (OOMKilled, exit codes, ImagePullBackOff, Unschedulable,
  the newest Warning event), not just the Job's "BackoffLimitExceeded".
- A pod that cannot pull its image is given `image_pull_grace_s`, an unschedulable one
  `unschedulable_timeout_s` (None: wait); then the Job is deleted and the stage fails.
- Retries are the controller's: the Job itself retries pods only as its profile says.
- Logs of every pod are fetched into the attempt's log folder when the Job ends.
- `cancel(run_id)` deletes the run's Jobs (pods go with them) and their Services/ConfigMaps/
  NetworkPolicies, and its judge servers; `adopt(job)` follows a Job that a previous controller
  created instead of creating another.
- An eval or annotate stage whose judge has no base_url gets a vLLM judge server (a Deployment
  + Service, `judge_server.py`) before its Job is created: adopted if one of the run and stage
  exists, else created, waited for, its URL put into the stage's spec as `judge.base_url`, and
  deleted when the stage ends however it ends.
- Under Kueue (`executor.kubernetes.queue`) a Job starts suspended. Suspended and never run:
  "pending quota (Kueue)"; unsuspended: "admitted by Kueue"; suspended again after it ran:
  "preempted by Kueue". Kueue's preemption deletes the pods through the Job's own suspension,
  which the Job controller counts as no failure, and the follow goes on: the Job waits for
  readmission, its pods start again and the stage resumes from its last checkpoint in the
  store. A preemption is therefore not a failed attempt; the result counts them
  (`StageResult.preemptions`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from xwin.executors.base import Executor, StageJob, StageResult
from xwin.executors.kubernetes import diagnose
from xwin.executors.kubernetes.judge_server import (
    JudgeServerError,
    JudgeServers,
    JudgeToServe,
    RenderedJudgeServer,
    judge_to_serve,
    with_judge_endpoint,
)
from xwin.executors.kubernetes.naming import (
    JOB_NAME_LABEL,
    KUEUE_QUEUE_LABEL,
    LABEL_APP,
    LABEL_ATTEMPT,
    LABEL_RUN,
    LABEL_STAGE,
    job_name,
    run_label,
)
from xwin.executors.kubernetes.render import CONTAINER, RenderedStage, render_stage
from xwin.executors.kubernetes.settings import KubernetesConfig
from xwin.executors.kubernetes.watch import ResumableWatch, call, is_transient
from xwin.executors.profiles import DEFAULT_IMAGES, JobProfile, load_judge_server_profile

log = logging.getLogger(__name__)
QUEUE_PENDING = "pending quota (Kueue)"
QUEUE_ADMITTED = "admitted by Kueue"
QUEUE_PREEMPTED = "preempted by Kueue; waiting for readmission"
_EPOCH = datetime.fromtimestamp(0, timezone.utc)


def api_client_from_environment() -> k8s.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: the kubeconfig ($KUBECONFIG, ~/.kube/config)."""
    configuration = k8s.Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        # $KUBECONFIG as it is now (the client reads it once, at import)
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                     client_configuration=configuration)
    return k8s.ApiClient(configuration)


class KubernetesExecutor(Executor):
    stages_outlive_controller = True  # a Job runs on whether or not a controller watches it

    def __init__(self, namespace: str, settings: KubernetesConfig | None = None,
                 api_client: k8s.ApiClient | None = None,
                 on_problem: Callable[[StageJob, str], None] | None = None,
                 on_queue: Callable[[StageJob, str], None] | None = None,
                 judge_server_profile: JobProfile | None = None):
        """on_problem(job, reason) is called once per new trouble of a running stage (a pod
        unschedulable, pulling its image in vain; its judge server's too), for `xwin status`
        to show; on_queue(job, state) at each change of its Kueue state (QUEUE_PENDING,
        QUEUE_ADMITTED, QUEUE_PREEMPTED). judge_server_profile: the judge server's pod
        (default: the sampler image, the JobProfile defaults)."""
        self.namespace = namespace
        self.settings = settings or KubernetesConfig()
        self.api_client = api_client or api_client_from_environment()
        self.batch = k8s.BatchV1Api(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        self.networking = k8s.NetworkingV1Api(self.api_client)
        self.on_problem = on_problem
        self.on_queue = on_queue
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.judge_servers = JudgeServers(
            namespace, self.settings,
            judge_server_profile or JobProfile(image=DEFAULT_IMAGES["sampler"]), self.api_client)

    @classmethod
    def from_config(cls, executor_config, **kwargs) -> KubernetesExecutor:
        """From the pipeline's `executor` section."""
        profile = load_judge_server_profile(executor_config.profiles_dir,
                                            executor_config.profiles, executor_config.images)
        return cls(executor_config.namespace, executor_config.kubernetes,
                   judge_server_profile=profile, **kwargs)

    # -- the Executor interface ---------------------------------------------------------------

    def run(self, job: StageJob) -> StageResult:
        if job.spec.store.kind != "s3":
            return StageResult(status="failed", permanent=True,
                               reason="the kubernetes executor needs store.kind: s3 (pods do "
                               "not share a local folder)")
        if self._is_cancelled(job.run_id):
            return StageResult(status="cancelled", reason="run cancelled")
        if (judge := judge_to_serve(job)) is None:
            return self._run_stage(job)
        with self._judge_server_for_the_stage(job):
            try:
                served = self._start_judge_server(job, judge)
                if served is None:
                    return StageResult(status="cancelled", reason="run cancelled")
                return self._run_stage(with_judge_endpoint(job, served.base_url, judge.served_name))
            except JudgeServerError as e:
                return StageResult(status="failed", reason=str(e), permanent=e.permanent)

    @contextmanager
    def _judge_server_for_the_stage(self, job: StageJob) -> Iterator[None]:
        """Deletes the stage's judge server when the stage ends: it succeeds, fails or is
        cancelled. Left running when the controller detaches (a signal: a BaseException) or
        loses the API server (a transient error): the stage Job still runs and calls it, and
        the controller that adopts the Job adopts the server too."""
        try:
            yield
        except Exception as e:
            if not is_transient(e):
                self.judge_servers.delete(job.run_id, job.stage)
            raise
        self.judge_servers.delete(job.run_id, job.stage)

    def _run_stage(self, job: StageJob) -> StageResult:
        rendered = render_stage(job, self.settings, self.namespace)
        created = self._create(rendered)
        self.last_answer = time.monotonic()
        log.info("%s: %s job %s/%s", job.stage, "created" if created else "adopted existing",
                 self.namespace, rendered.name)
        return self._follow(job, rendered.name)

    def _start_judge_server(self, job: StageJob, judge: JudgeToServe) -> RenderedJudgeServer | None:
        """The stage's judge server, created or adopted, once it is ready; None: cancelled."""
        served = self.judge_servers.ensure(job, judge)
        on_problem = None
        if self.on_problem is not None:
            def on_problem(reason: str) -> None:
                self.on_problem(job, reason)
        ready = self.judge_servers.wait_ready(job, served.name, judge.server.startup_timeout_s,
                                              on_problem=on_problem,
                                              cancelled=lambda: self._is_cancelled(job.run_id))
        return served if ready else None

    def adopt(self, job: StageJob) -> StageResult | None:
        name = job_name(job.run_id, job.stage, job.attempt)
        selector = ",".join([f"{LABEL_RUN}={run_label(job.run_id)}", f"{LABEL_STAGE}={job.stage}",
                             f"{LABEL_ATTEMPT}={job.attempt}"])
        found = call(self.batch.list_namespaced_job, self.namespace, label_selector=selector).items
        self.last_answer = time.monotonic()
        if not found:
            return None
        existing = next((j for j in found if j.metadata.name == name), found[0])
        judge = judge_to_serve(job) if job.spec.store.kind == "s3" else None
        with self._judge_server_for_the_stage(job) if judge is not None else nullcontext():
            try:
                if judge is not None:
                    # The Job's pods call the server its predecessor started: adopt it (or start
                    # it again, if it is gone), and wait for it as a new run would.
                    served = self._start_judge_server(job, judge)
                    if served is None:
                        return StageResult(status="cancelled", reason="run cancelled")
                    job = with_judge_endpoint(job, served.base_url, judge.served_name)
                if existing.metadata.name == name and job.spec.store.kind == "s3":
                    # A controller that died right after creating the Job may not have made its
                    # ConfigMap and Service yet; without them the pods would wait forever.
                    self._create_owned(render_stage(job, self.settings, self.namespace), existing)
                log.info("%s: adopting job %s/%s", job.stage, self.namespace, existing.metadata.name)
                return self._follow(job, existing.metadata.name)
            except JudgeServerError as e:
                self._delete_stage_objects(existing.metadata.name)  # its judge requests would fail
                return StageResult(status="failed", reason=str(e), permanent=e.permanent)

    def unreachable(self, error: BaseException) -> str | None:
        return "Kubernetes API unreachable" if is_transient(error) else None

    def cancel(self, run_id: str) -> None:
        with self._lock:
            self._cancelled.add(run_id)
        selector = f"{LABEL_APP}=xwin,{LABEL_RUN}={run_label(run_id)}"
        for found in call(self.batch.list_namespaced_job, self.namespace, label_selector=selector).items:
            self._delete_stage_objects(found.metadata.name)
        self.judge_servers.delete_run(run_id)

    # -- creating --------------------------------------------------------------------------------

    def _create(self, rendered: RenderedStage) -> bool:
        """Create the Job, then its ConfigMap and Service owned by it (Kubernetes deletes them
        with the Job, after its TTL too). The pods wait for the ConfigMap volume meanwhile.
        False: the Job already existed (a previous controller made it) and is followed as is."""
        try:
            job = call(self.batch.create_namespaced_job, self.namespace, rendered.job)
            created = True
        except ApiException as e:
            if e.status != 409:
                raise
            job = call(self.batch.read_namespaced_job, rendered.name, self.namespace)
            created = False
        self._create_owned(rendered, job)
        return created

    def _create_owned(self, rendered: RenderedStage, job: k8s.V1Job) -> None:
        """The ConfigMap, Service and NetworkPolicy, owned by the Job; those that exist already
        are kept."""
        owner = k8s.V1OwnerReference(api_version="batch/v1", kind="Job",
                                     name=job.metadata.name, uid=job.metadata.uid)
        for obj, create in ((rendered.config_map, self.core.create_namespaced_config_map),
                            (rendered.service, self.core.create_namespaced_service),
                            (rendered.network_policy,
                             self.networking.create_namespaced_network_policy)):
            if obj is None:
                continue
            obj.metadata.owner_references = [owner]
            try:
                call(create, self.namespace, obj)
            except ApiException as e:
                if e.status != 409:
                    raise

    def _delete_stage_objects(self, name: str) -> None:
        """The Job with its pods (Foreground: gone when the delete completes), and the
        Service, NetworkPolicy and ConfigMap of the same name."""
        body = k8s.V1DeleteOptions(propagation_policy="Foreground")
        for delete in (self.batch.delete_namespaced_job, self.core.delete_namespaced_service,
                       self.networking.delete_namespaced_network_policy,
                       self.core.delete_namespaced_config_map):
            try:
                call(delete, name, self.namespace, body=body)
            except ApiException as e:
                if e.status != 404:
                    raise

    def _is_cancelled(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._cancelled

    # -- following -------------------------------------------------------------------------------

    def _follow(self, job: StageJob, name: str) -> StageResult:
        """Watch Job `name` until it ends (or must be given up) and report how it ended."""
        watcher = ResumableWatch(self.batch.list_namespaced_job, self.namespace,
                                 field_selector=f"metadata.name={name}",
                                 timeout_s=self.settings.watch_timeout_s)
        stuck_since: dict[tuple[str, str], float] = {}
        queue = _QueueState()
        seen_job = False
        while True:
            for event in watcher.events():
                self.last_answer = time.monotonic()
                obj = event["object"]
                seen_job = True
                if event["type"] == "DELETED" or obj.metadata.deletion_timestamp:
                    return self._deleted(job, name, queue.preemptions)
                if (outcome := diagnose.job_outcome(obj)) is not None:
                    return self._finish(job, name, obj, outcome, queue.preemptions)
                if (change := queue.update(obj)) is not None:
                    self._queue_changed(job, name, change)
                    stuck_since.clear()  # the pods of before a preemption are gone
                if queue.suspended:
                    continue  # no pods to check: Kueue has not (re)admitted the Job
                if (given_up := self._check_pods(job, name, stuck_since)) is not None:
                    return given_up
            # The watch request ended quietly: check on the pods, then resume.
            self.last_answer = time.monotonic()
            if self._is_cancelled(job.run_id):
                return self._deleted(job, name, queue.preemptions)
            if not seen_job:
                return StageResult(status="failed", reason=f"job {self.namespace}/{name} not found")
            if queue.suspended:
                continue
            if (given_up := self._check_pods(job, name, stuck_since)) is not None:
                return given_up

    def _queue_changed(self, job: StageJob, name: str, state: str) -> None:
        log.info("%s: job %s/%s %s", job.stage, self.namespace, name, state)
        if self.on_queue is not None:
            self.on_queue(job, state)

    def _deleted(self, job: StageJob, name: str, preemptions: int = 0) -> StageResult:
        log_path = self._fetch_logs(job, name)
        if self._is_cancelled(job.run_id):
            return StageResult(status="cancelled", reason="run cancelled", log_path=log_path,
                               preemptions=preemptions)
        return StageResult(status="failed", reason=f"job {self.namespace}/{name} was deleted",
                           log_path=log_path, preemptions=preemptions)

    def _pods(self, name: str) -> list[k8s.V1Pod]:
        return call(self.core.list_namespaced_pod, self.namespace,
                    label_selector=f"{JOB_NAME_LABEL}={name}").items

    def _check_pods(self, job: StageJob, name: str,
                    stuck_since: dict[tuple[str, str], float]) -> StageResult | None:
        """Pods that cannot start never fail a Job by themselves: give up on them here."""
        now = time.monotonic()
        for pod in self._pods(name):
            problem = diagnose.pod_problem(pod)
            if problem is None or problem.failed:
                continue
            key = (problem.pod, problem.reason)
            if key not in stuck_since:
                stuck_since[key] = now
                problem = self._with_events(problem)
                log.warning("%s: %s", job.stage, problem.describe())
                if self.on_problem is not None:
                    self.on_problem(job, problem.describe())
            if problem.reason == "Unschedulable":
                limit = self.settings.unschedulable_timeout_s
            else:
                limit = self.settings.image_pull_grace_s
            if limit is not None and now - stuck_since[key] >= limit:
                problem = self._with_events(problem)
                log_path = self._fetch_logs(job, name)
                self._delete_stage_objects(name)
                return StageResult(status="failed", reason=problem.describe(),
                                   permanent=problem.permanent, log_path=log_path)
        return None

    def _finish(self, job: StageJob, name: str, obj: k8s.V1Job, outcome: str,
                preemptions: int = 0) -> StageResult:
        log_path = self._fetch_logs(job, name)
        if outcome == "succeeded":
            note = (f"preempted by Kueue {preemptions} time(s); readmitted and resumed"
                    if preemptions else None)
            return StageResult(status="succeeded", exit_code=0, log_path=log_path, reason=note,
                               preemptions=preemptions)
        job_reason, job_message = diagnose.job_failure(obj)
        problem = diagnose.first_failure(self._pods(name))
        if problem is None:  # e.g. DeadlineExceeded with the pods already gone
            return StageResult(status="failed", reason=f"{job_reason}: {job_message}".rstrip(": "),
                               log_path=log_path, preemptions=preemptions)
        problem = self._with_events(problem)
        reason = problem.describe()
        if job_reason in ("DeadlineExceeded",):
            reason = f"DeadlineExceeded: {job_message}; {reason}"
        failed_log = job.log_dir / self._log_names(job, name).get(problem.pod, "")
        return StageResult(status="failed", exit_code=problem.exit_code, reason=reason,
                           permanent=problem.permanent, preemptions=preemptions,
                           log_path=failed_log if failed_log.is_file() else log_path)

    def _with_events(self, problem: diagnose.PodProblem) -> diagnose.PodProblem:
        try:
            events = call(self.core.list_namespaced_event, self.namespace,
                          field_selector=f"involvedObject.name={problem.pod}").items
        except ApiException as e:  # events are a nicety; RBAC may not grant them
            log.debug("no events for %s: %s", problem.pod, e.reason)
            return problem
        return diagnose.with_event_detail(problem, events)

    # -- logs ------------------------------------------------------------------------------------

    def _log_names(self, job: StageJob, name: str) -> dict[str, str]:
        """Pod -> log file name, as the local executor names them: `<stage>.<attempt>.log` for
        index 0, `.rank-i` / `.shard-i` for the others, `.<pod>` for earlier tries of an index."""
        kind = {"train": "rank", "sharded": "shard"}.get(job.profile.kind, "pod")
        pods = sorted(self._pods(name), key=lambda p: (p.metadata.creation_timestamp or _EPOCH,
                                                       p.metadata.name))
        names: dict[str, str] = {}
        taken: set[str] = set()
        for pod in reversed(pods):  # the newest try of each index gets the plain name
            index = diagnose.completion_index(pod) or 0
            base = f"{job.stage}.{job.attempt}" + (f".{kind}-{index}" if index else "")
            file = f"{base}.log" if base not in taken else f"{base}.{pod.metadata.name}.log"
            taken.add(base)
            names[pod.metadata.name] = file
        return names

    def _fetch_logs(self, job: StageJob, name: str) -> Path | None:
        """Every pod's log into job.log_dir; the path of index 0's (the main log)."""
        job.log_dir.mkdir(parents=True, exist_ok=True)
        main = None
        for pod, file in self._log_names(job, name).items():
            path = job.log_dir / file
            tmp = path.with_name(path.name + ".tmp")
            try:
                # streamed to the file: a long training log need not fit in memory
                response = call(self.core.read_namespaced_pod_log, pod, self.namespace,
                                container=CONTAINER, _preload_content=False)
                with open(tmp, "wb") as out:
                    out.writelines(response.stream(1 << 16))
                response.release_conn()
            except ApiException as e:  # never started (image pull), or already gone
                tmp.write_text(f"[no log from pod {pod}: {e.status} {e.reason}]\n")
            os.replace(tmp, path)
            if file == f"{job.stage}.{job.attempt}.log":
                main = path
        return main


class _QueueState:
    """A followed Job's Kueue state, from its `spec.suspend` (the one field Kueue drives):
    suspended before it ever ran is pending quota, unsuspended is admitted, suspended again
    after it ran is preempted (or evicted, e.g. by waitForPodsReady's timeout) and requeued.
    Jobs without the queue label are never reported."""

    def __init__(self):
        self.state: str | None = None
        self.suspended = False
        self.preemptions = 0

    def update(self, obj: k8s.V1Job) -> str | None:
        """The new state when it changed, else None."""
        self.suspended = bool(obj.spec and obj.spec.suspend)
        if KUEUE_QUEUE_LABEL not in (obj.metadata.labels or {}):
            return None
        if self.suspended:
            new = QUEUE_PREEMPTED if self.state == QUEUE_ADMITTED else (self.state or QUEUE_PENDING)
        else:
            new = QUEUE_ADMITTED
        if new == self.state:
            return None
        if new == QUEUE_PREEMPTED:
            self.preemptions += 1
        self.state = new
        return new
