"""The StageJobs of a whole pipeline, for `xwin render`: the controller's plan (keys, inputs,
shards) turned into the jobs the Kubernetes executor would create, without touching a store or
a cluster."""

from __future__ import annotations

from pathlib import Path

from xwin.artifacts.stage_io import StageSpec
from xwin.controller.executor import JobProfile, StageJob
from xwin.k8s.profiles import load_profiles


class NothingCommitted:
    """The store as `xwin render` assumes it: empty, so every stage of the window is planned to
    run (rendering must work offline, before the bucket exists)."""

    def exists(self, key: str) -> bool:
        return False

    def manifest(self, key: str):
        return None

    def list(self, prefix: str = "") -> list[str]:
        return []


def profiles_of(config) -> dict[str, JobProfile]:
    return load_profiles(config.executor.profiles_dir, config.executor.profiles)


def planned_jobs(config, run_id: str, stages: list[str] | None = None,
                 store=None) -> list[StageJob]:
    """One StageJob (attempt 1) per stage the run would execute, in pipeline order."""
    from xwin.controller.graph import make_plan

    profiles = profiles_of(config)
    shards = {name: p.shards for name, p in profiles.items() if p.kind == "sharded"}
    plan = make_plan(config, store or NothingCommitted(), shards=shards)
    jobs = []
    for planned in plan.stages.values():
        if planned.decision != "run" or (stages and planned.name not in stages):
            continue
        spec = StageSpec(
            stage=planned.name,
            run_id=run_id,
            store=config.store,
            inputs=planned.inputs,
            output=planned.key,
            config=planned.config,
            config_digest=planned.config_digest,
            shards=planned.shards,
        )
        jobs.append(StageJob(run_id=run_id, stage=planned.name, spec=spec,
                             profile=profiles[planned.name],
                             log_dir=Path(config.run.workdir) / "runs" / run_id / "logs"))
    return jobs
