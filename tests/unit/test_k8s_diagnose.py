"""Failure reasons read from pods, Jobs and events, as the API returns them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kubernetes import client as k8s

from xwin.executors.kubernetes.diagnose import (
    first_failure,
    job_failure,
    job_outcome,
    pod_problem,
    with_event_detail,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def pod(name="p", phase="Pending", state=None, conditions=None, reason=None, message=None):
    statuses = None
    if state is not None:
        statuses = [k8s.V1ContainerStatus(name="stage", image="i", image_id="", ready=False,
                                          restart_count=0, state=state)]
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, creation_timestamp=T0),
        status=k8s.V1PodStatus(phase=phase, container_statuses=statuses, conditions=conditions,
                               reason=reason, message=message),
    )


def terminated(code, reason, finished=T0):
    return k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(
        exit_code=code, reason=reason, finished_at=finished))


def waiting(reason, message=""):
    return k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=reason, message=message))


def event(message, when, type_="Warning"):
    return k8s.CoreV1Event(metadata=k8s.V1ObjectMeta(name="e"), involved_object=k8s.V1ObjectReference(),
                           type=type_, message=message, last_timestamp=when)


def test_oom_killed_is_a_failure_worth_retrying():
    problem = pod_problem(pod(phase="Failed", state=terminated(137, "OOMKilled")))
    assert (problem.reason, problem.exit_code, problem.failed, problem.permanent) == (
        "OOMKilled", 137, True, False)
    assert problem.describe() == "OOMKilled: pod p"


def test_exit_code_2_is_a_permanent_user_error():
    problem = pod_problem(pod(phase="Failed", state=terminated(2, "Error")))
    assert problem.permanent and problem.message == "container stage exited with code 2"


def test_image_pull_backoff_is_stuck_and_permanent():
    problem = pod_problem(pod(state=waiting("ImagePullBackOff", 'Back-off pulling image "x"')))
    assert (problem.reason, problem.failed, problem.permanent) == ("ImagePullBackOff", False, True)


def test_unschedulable_comes_from_the_pod_scheduled_condition():
    cond = k8s.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                              message="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    problem = pod_problem(pod(conditions=[cond]))
    assert problem.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in problem.message
    assert not problem.permanent


def test_an_evicted_pod_reports_the_pod_reason():
    problem = pod_problem(pod(phase="Failed", reason="Evicted", message="low on ephemeral-storage"))
    assert (problem.reason, problem.message, problem.failed) == (
        "Evicted", "low on ephemeral-storage", True)


def test_healthy_pods_have_no_problem():
    assert pod_problem(pod(phase="Running", state=k8s.V1ContainerState(
        running=k8s.V1ContainerStateRunning(started_at=T0)))) is None
    assert pod_problem(pod(state=waiting("ContainerCreating"))) is None
    assert pod_problem(pod(phase="Succeeded", state=terminated(0, "Completed"))) is None


def test_the_newest_warning_event_adds_its_detail_once():
    problem = pod_problem(pod(state=waiting("ErrImagePull", "pull failed")))
    events = [event("old", T0), event("manifest unknown", T0 + timedelta(seconds=5)),
              event("Pulling image", T0 + timedelta(seconds=9), type_="Normal")]
    detailed = with_event_detail(problem, events)
    assert detailed.message == "pull failed; manifest unknown"
    assert with_event_detail(detailed, events).message == detailed.message
    assert with_event_detail(problem, []) is problem


def test_the_first_rank_to_fail_is_the_one_reported():
    collateral = pod("rank-0", phase="Failed", state=terminated(1, "Error", T0 + timedelta(seconds=3)))
    cause = pod("rank-1", phase="Failed", state=terminated(137, "OOMKilled", T0))
    running = pod("rank-2", phase="Running")
    assert first_failure([collateral, running, cause]).pod == "rank-1"
    assert first_failure([running]) is None


def test_job_conditions_say_how_it_ended():
    def job(*conditions):
        return k8s.V1Job(status=k8s.V1JobStatus(conditions=[
            k8s.V1JobCondition(type=t, status=s, reason=r, message=m) for t, s, r, m in conditions]))

    assert job_outcome(job(("SuccessCriteriaMet", "True", None, None),
                           ("Complete", "True", None, None))) == "succeeded"
    failed = job(("FailureTarget", "True", "BackoffLimitExceeded", ""),
                 ("Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    assert job_outcome(failed) == "failed"
    assert job_failure(failed) == ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert job_outcome(job(("Suspended", "False", None, None))) is None
    assert job_outcome(k8s.V1Job()) is None
