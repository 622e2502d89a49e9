"""What the controller hands an executor, and what it gets back. One interface, two executors:
`LocalExecutor` (the embedded default: the rendered Job's command run as local processes) and
`KubernetesExecutor` (the same Job created in a cluster)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from xwin.artifacts.stage_io import StageSpec
from xwin.core.config import StrictModel


class JobProfile(StrictModel):
    """How one stage runs as a Job: jobs/<stage>.yaml, overridable per pipeline config."""

    image: str = "xwin-trainer:dev"
    nodes: int = Field(1, ge=1, description="pods of an Indexed Job gang (training stages)")
    nproc_per_node: int = Field(1, ge=1, description="processes per pod: GPUs per pod on a cluster")
    shards: int = Field(1, ge=1, description="Indexed-Job completions of a sharded stage")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod")
    cpu: str = "1"
    memory: str = "4Gi"
    shm_size: str | None = Field(None, description="memory-backed /dev/shm, e.g. 16Gi for NCCL")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    priority_class: str | None = None
    backoff_limit: int = Field(0, ge=0, description="pod retries inside the Job (the controller retries whole stages)")
    active_deadline_s: int | None = Field(None, ge=1)
    ttl_after_finished_s: int = 3600
    env: dict[str, str] = Field(default_factory=dict)
    kind: Literal["train", "sharded", "single"] = "single"


class StageJob(StrictModel):
    """One attempt at one stage of one run."""

    run_id: str
    stage: str
    attempt: int = 1
    spec: StageSpec
    profile: JobProfile
    log_dir: Path


class StageResult(StrictModel):
    status: Literal["succeeded", "failed", "cancelled"]
    exit_code: int | None = None
    reason: str | None = Field(None, description="why it failed: OOMKilled, ImagePullBackOff, the stage's error ...")
    permanent: bool = Field(False, description="bad config/data: retrying cannot help")
    log_path: Path | None = None


class Executor(ABC):
    @abstractmethod
    def run(self, job: StageJob) -> StageResult:
        """Run the stage to completion (blocking) and report how it ended."""

    @abstractmethod
    def cancel(self, run_id: str) -> None:
        """Stop every running job of the run (Ctrl-C, `xwin cancel`)."""

    def adopt(self, job: StageJob) -> StageResult | None:
        """On resume: if this attempt is still running (a cluster Job survives a controller
        crash), wait for it instead of starting a duplicate. None: nothing to adopt."""
        return None
