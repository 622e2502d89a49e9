"""From a planned stage to what an executor runs: the stage's Job profile (`profiles_for`), its
StageJob (`stage_job`, the one place a StageSpec is built from a plan), the executor a config
names (`make_executor`), and the jobs of a whole run for `xwin render` (`planned_jobs`)."""

from __future__ import annotations

from pathlib import Path

from xwin.artifacts.stage_io import StageSpec
from xwin.controller.graph import PlannedStage, make_plan
from xwin.executors.base import Executor, StageJob
from xwin.executors.profiles import JobProfile, load_profiles


class NothingCommitted:
    """The store as `xwin render` assumes it: empty, so every stage of the window is planned to
    run (rendering must work offline, before the bucket exists)."""

    def exists(self, key: str) -> bool:
        return False

    def manifest(self, key: str):
        return None

    def list(self, prefix: str = "") -> list[str]:
        return []


def profiles_for(config) -> dict[str, JobProfile]:
    """Every stage's Job profile under the pipeline config's `executor` section."""
    executor = config.executor
    return load_profiles(executor.profiles_dir, executor.profiles, executor.images)


def sharded_counts(profiles: dict[str, JobProfile]) -> dict[str, int]:
    """stage -> shard count, for the plan (a sharded stage's key depends on how it is cut)."""
    return {name: p.shards for name, p in profiles.items() if p.kind == "sharded"}


def stage_job(config, planned: PlannedStage, run_id: str, profile: JobProfile, log_dir: Path,
              attempt: int = 1) -> StageJob:
    """The StageJob of one attempt at a planned stage. A local run's processes may start in
    another folder: the store's root and the workdir become absolute paths."""
    store = config.store
    workdir = Path(config.run.workdir) / "work"
    if config.executor.kind == "local":
        store = store.model_copy(update={"root": Path(store.root).absolute()})
        workdir = workdir.absolute()
    if planned.shards > 1:
        profile = profile.model_copy(update={"shards": planned.shards})
    spec = StageSpec(
        stage=planned.name, run_id=run_id, store=store, inputs=planned.inputs, output=planned.key,
        config=planned.config, config_digest=planned.config_digest, shards=planned.shards,
        workdir=workdir,
    )
    return StageJob(run_id=run_id, stage=planned.name, attempt=attempt, spec=spec,
                    profile=profile, log_dir=log_dir)


def make_executor(config, on_spawn=None, on_problem=None, on_queue=None) -> Executor:
    """The executor `executor.kind` names; the cluster client is imported only for a cluster."""
    if config.executor.kind == "local":
        from xwin.executors.local import LocalExecutor

        return LocalExecutor(parallel_shards=config.executor.local_parallel_shards, on_spawn=on_spawn)
    from xwin.executors.kubernetes.executor import KubernetesExecutor

    return KubernetesExecutor.from_config(config.executor, on_problem=on_problem, on_queue=on_queue)


def planned_jobs(config, run_id: str, stages: list[str] | None = None,
                 store=None) -> list[StageJob]:
    """One StageJob (attempt 1) per stage the run would execute, in pipeline order."""
    profiles = profiles_for(config)
    plan = make_plan(config, store or NothingCommitted(), shards=sharded_counts(profiles))
    log_dir = Path(config.run.workdir) / "runs" / run_id / "logs"
    return [stage_job(config, planned, run_id, profiles[planned.name], log_dir)
            for planned in plan.stages.values()
            if planned.decision == "run" and (not stages or planned.name in stages)]
