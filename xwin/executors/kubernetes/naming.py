"""Names and labels of a stage attempt's objects: derived from (run, stage, attempt) alone, so a
controller that restarts finds the objects its predecessor created."""

from __future__ import annotations

import hashlib
import re

LABEL_APP = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_RUN = "xwin.dev/run"
LABEL_STAGE = "xwin.dev/stage"
LABEL_ATTEMPT = "xwin.dev/attempt"
ANNOTATION_RUN_ID = "xwin.dev/run-id"  # the full run id; the label may be shortened
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on pods by the Job controller
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # the LocalQueue a Job waits in
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # its WorkloadPriorityClass

_MAX_JOB_NAME = 52  # + "-<index>" hostname and the pod name suffix stay within 63


def _slug(text: str, limit: int) -> str:
    """A DNS-label-safe form of text; a short hash keeps distinct long ids distinct."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if len(slug) <= limit and slug == text:
        return slug
    tag = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{slug[: limit - 7].rstrip('-')}-{tag}"


def run_label(run_id: str) -> str:
    """The run id as a label value (<= 63 chars of [a-z0-9-]); distinct ids stay distinct."""
    return _slug(run_id, 63)


def job_name(run_id: str, stage: str, attempt: int) -> str:
    """`xwin-<run>-<stage>-<attempt>`: the name of the Job, its Service and its ConfigMap."""
    tail = f"-{stage}-{attempt}"
    run = _slug(run_id, _MAX_JOB_NAME - 5 - len(tail))
    # the prefix marks the objects as ours and makes the name start with a letter (DNS-1035)
    return f"{run}{tail}" if run.startswith("xwin") else f"xwin-{run}{tail}"


def judge_server_name(run_id: str, stage: str) -> str:
    """`xwin-<run>-<stage>-judge`: the Deployment, Service and NetworkPolicy of the judge server
    a stage uses. One per (run, stage), not per attempt: a resumed run finds it by name."""
    return job_name(run_id, stage, 0).removesuffix("-0") + "-judge"


def stage_labels(run_id: str, stage: str, attempt: int) -> dict[str, str]:
    return {
        LABEL_APP: "xwin",
        LABEL_COMPONENT: "stage",
        LABEL_RUN: run_label(run_id),
        LABEL_STAGE: stage,
        LABEL_ATTEMPT: str(attempt),
    }


def master_addr(name: str, namespace: str) -> str:
    """Stable DNS name of index 0 of an Indexed Job whose pods use the headless Service `name`."""
    return f"{name}-0.{name}.{namespace}.svc"




def judge_server_labels(run_id: str, stage: str) -> dict[str, str]:
    """The judge server's objects and pods; the labels a resumed run finds them by."""
    return {
        LABEL_APP: "xwin",
        LABEL_COMPONENT: "judge-server",
        LABEL_RUN: run_label(run_id),
        LABEL_STAGE: stage,
    }
