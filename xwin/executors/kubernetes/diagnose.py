"""Why a stage's pods are not doing their work, read from the objects the API returns: a Job's
terminal condition, a pod's container statuses and conditions, and the Warning events about it.
Pure functions over the client's models, so the reasons are testable without a cluster."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from kubernetes import client as k8s

from xwin.core.errors import EXIT_USER_ERROR
from xwin.executors.kubernetes.naming import COMPLETION_INDEX_ANNOTATION
from xwin.executors.kubernetes.render import CONTAINER

# A pod waiting for one of these will not start by itself: the image reference, a missing
# Secret or a bad spec is configuration, so retrying the stage cannot help either.
IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                                "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


@dataclass(frozen=True)
class PodProblem:
    """One pod's trouble: `reason` is Kubernetes' word (OOMKilled, ImagePullBackOff,
    Unschedulable, Error ...), `message` the detail a person needs."""

    pod: str
    reason: str
    message: str = ""
    exit_code: int | None = None
    failed: bool = False  # the pod has ended; else it is stuck before starting
    permanent: bool = False

    def describe(self) -> str:
        detail = f" ({self.message})" if self.message else ""
        return f"{self.reason}: pod {self.pod}{detail}"


def job_outcome(job: k8s.V1Job) -> Literal["succeeded", "failed"] | None:
    """A Job's terminal condition; None while it runs."""
    for cond in (job.status.conditions or []) if job.status else []:
        if cond.status == "True" and cond.type == "Complete":
            return "succeeded"
        if cond.status == "True" and cond.type == "Failed":
            return "failed"
    return None


def job_failure(job: k8s.V1Job) -> tuple[str, str]:
    """(reason, message) of a failed Job: BackoffLimitExceeded, DeadlineExceeded,
    PodFailurePolicy, FailedIndexes ..."""
    for cond in (job.status.conditions or []) if job.status else []:
        if cond.type == "Failed" and cond.status == "True":
            return cond.reason or "Failed", cond.message or ""
    return "Failed", ""


def completion_index(pod: k8s.V1Pod) -> int | None:
    value = (pod.metadata.annotations or {}).get(COMPLETION_INDEX_ANNOTATION)
    return int(value) if value is not None and value.isdigit() else None


def pod_problem(pod: k8s.V1Pod) -> PodProblem | None:
    """What is wrong with a pod, or None while it is fine (pending normally, running, done)."""
    name = pod.metadata.name
    status = pod.status or k8s.V1PodStatus()
    container = _stage_container_status(status)
    if status.phase == "Failed":
        if container is not None and container.state and container.state.terminated:
            term = container.state.terminated
            reason = term.reason or "Error"
            message = term.message or ""
            if reason == "Error":
                message = message or f"container {CONTAINER} exited with code {term.exit_code}"
            return PodProblem(name, reason, message.strip(), term.exit_code, failed=True,
                              permanent=term.exit_code == EXIT_USER_ERROR)
        # Ended without its container ending: evicted, node lost, deadline.
        return PodProblem(name, status.reason or "Failed", status.message or "", failed=True)
    if status.phase not in (None, "Pending"):
        return None
    if container is not None and container.state and container.state.waiting:
        waiting = container.state.waiting
        if waiting.reason in IMAGE_PULL_REASONS or waiting.reason in CONFIG_REASONS:
            return PodProblem(name, waiting.reason, waiting.message or "", permanent=True)
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return PodProblem(name, "Unschedulable", cond.message or "")
    return None


def _stage_container_status(status: k8s.V1PodStatus) -> k8s.V1ContainerStatus | None:
    for cs in status.container_statuses or []:
        if cs.name == CONTAINER:
            return cs
    return None


def with_event_detail(problem: PodProblem, events: list[k8s.CoreV1Event]) -> PodProblem:
    """Add the newest Warning event's message: it says what the pod's status does not (a
    failed pull's registry error, the scheduler's "0/3 nodes are available: ...")."""
    warnings = [e for e in events if e.type == "Warning" and e.message]
    if not warnings:
        return problem
    detail = max(warnings, key=_event_time).message.strip()
    if detail in problem.message:
        return problem
    message = f"{problem.message}; {detail}" if problem.message else detail
    return PodProblem(problem.pod, problem.reason, message, problem.exit_code,
                      problem.failed, problem.permanent)


def first_failure(pods: list[k8s.V1Pod]) -> PodProblem | None:
    """The failure to report for a failed Job: the earliest pod that ended badly (in a gang
    the others are usually collateral of the first)."""
    problems = [(p, pod_problem(p)) for p in pods]
    failed = [(p, pr) for p, pr in problems if pr is not None and pr.failed]
    if failed:
        return min(failed, key=lambda item: _ended_at(item[0]))[1]
    stuck = [pr for _, pr in problems if pr is not None]
    return stuck[0] if stuck else None


def _ended_at(pod: k8s.V1Pod) -> datetime:
    cs = _stage_container_status(pod.status)
    term = cs.state.terminated if cs is not None and cs.state else None
    when = (term.finished_at if term else None) or pod.metadata.creation_timestamp
    return when or datetime.max.replace(tzinfo=timezone.utc)


def _event_time(event: k8s.CoreV1Event) -> datetime:
    when = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
    return when or datetime.min.replace(tzinfo=timezone.utc)
