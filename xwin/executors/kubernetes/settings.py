"""Cluster-side settings of the Kubernetes executor: the `executor.kubernetes` section of the
pipeline config. Kept free of the kubernetes client so `xwin.config` stays light to import."""

from __future__ import annotations

from pydantic import Field

from xwin.core.config import StrictModel


class KubernetesConfig(StrictModel):
    """Everything about stage pods that is the same for every stage (per-stage settings live
    in the Job profiles, jobs/*.yaml)."""

    s3_secret: str = Field(
        "xwin-s3",
        description="Secret holding the store's credentials; its keys are read into the "
        "stage pods' environment (never into args or the spec)",
    )
    s3_secret_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        },
        description="environment variable -> key in s3_secret",
    )
    service_account: str | None = Field(
        None,
        description="ServiceAccount of stage pods (None: the namespace's default); its token "
        "is never mounted, stages do not talk to the API",
    )
    image_pull_policy: str | None = Field(
        None, description="Always, IfNotPresent or Never (None: Kubernetes' default for the tag)"
    )
    image_pull_secrets: list[str] = Field(default_factory=list)
    run_as_user: int = Field(10001, ge=1, description="non-root uid of the images' xwin user")
    read_only_root_filesystem: bool = Field(
        True, description="stage pods write only to emptyDirs (/tmp, the workdir, caches)"
    )
    work_volume_size: str | None = Field(
        None, description="sizeLimit of the workdir emptyDir (downloaded models, checkpoints)"
    )
    master_port: int = Field(29500, ge=1, le=65535, description="rendezvous port of rank 0")
    image_pull_grace_s: float = Field(
        180.0, ge=0, description="fail the stage when a pod cannot pull its image for this long"
    )
    unschedulable_timeout_s: float | None = Field(
        None, ge=0, description="fail the stage when a pod stays unschedulable this long "
        "(None: wait; the reason still shows in the log and `xwin status`)"
    )
    watch_timeout_s: int = Field(
        60, ge=1, description="server-side length of one watch request; it is then resumed"
    )
    queue: str | None = Field(
        None, description="Kueue LocalQueue of the stage Jobs (None: no Kueue). Each Job is "
        "created suspended with the label kueue.x-k8s.io/queue-name; Kueue unsuspends it when "
        "the whole gang fits its quota, and may suspend it again to preempt it",
    )
    priority_class: str | None = Field(
        None, description="Kueue WorkloadPriorityClass of the stage Jobs (label "
        "kueue.x-k8s.io/priority-class; orders the queue and preemption). Not the pods' "
        "PriorityClass, which is the profiles' priority_class",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels on every object")
    annotations: dict[str, str] = Field(default_factory=dict, description="extra pod annotations")
