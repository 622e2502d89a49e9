"""The executor interface: what the controller hands an executor (a StageJob) and what it gets
back (a StageResult). Two executors implement it as siblings that never import each other:
`local.LocalExecutor` (the embedded default: the stage's launch as local processes) and
`kubernetes.executor.KubernetesExecutor` (the same launch as a Job in a cluster)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from pydantic import Field

from xwin.artifacts.stage_io import StageSpec
from xwin.core.config import StrictModel
from xwin.executors.profiles import JobProfile


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
    preemptions: int = Field(0, ge=0, description="times a queue (Kueue) suspended the running "
                             "attempt to free its quota; it resumed after readmission, no failure")


class Executor(ABC):
    # Whether a stage outlives its controller: a cluster Job does, so SIGTERM (a node drain, an
    # eviction, `helm upgrade`) detaches from it instead of deleting it; local processes are
    # the controller's children and are stopped with it.
    stages_outlive_controller: bool = False
    # When the backend last answered (time.monotonic; None: not yet, or not tracked): after an
    # outage, an answer tells the controller it is over.
    last_answer: float | None = None

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

    def unreachable(self, error: BaseException) -> str | None:
        """What is unreachable if `error` is an outage of the executor's backend (beyond its
        client's own retries), e.g. "Kubernetes API unreachable"; None for any other error."""
        return None
