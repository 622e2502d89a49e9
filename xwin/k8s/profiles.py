"""Per-stage Job profiles: jobs/<stage>.yaml, then the pipeline config's `executor.profiles`
overrides. Both executors read them: the Kubernetes one renders pods from them, the local one
takes nodes x nproc_per_node and shards from them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xwin.controller.executor import JobProfile
from xwin.core.config import format_validation_error, load_yaml
from xwin.core.errors import ConfigError
from xwin.stages.registry import STAGE_NAMES, stage_def

log = logging.getLogger(__name__)

def load_profiles(
    profiles_dir: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, JobProfile]:
    """One JobProfile per stage: defaults < jobs/<stage>.yaml < overrides[stage] (field by field).

    A missing folder means defaults (a local run started outside the repository needs none);
    a bad file or an override for an unknown stage is an error naming it."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(
            f"executor.profiles: unknown stage(s) {', '.join(unknown)}; stages are: "
            f"{', '.join(STAGE_NAMES)}"
        )
    folder = Path(profiles_dir) if profiles_dir is not None else None
    if folder is not None and not folder.is_dir():
        log.info("no Job profile folder %s; using default profiles", folder)
        folder = None
    if folder is not None:
        strays = sorted(p.name for p in folder.glob("*.yaml") if p.stem not in STAGE_NAMES)
        if strays:
            raise ConfigError(f"{folder}: {', '.join(strays)} name no stage; stages are: "
                              f"{', '.join(STAGE_NAMES)}")
    profiles = {}
    for stage in STAGE_NAMES:
        fields: dict[str, Any] = {"kind": stage_def(stage).kind}
        source = "defaults"
        if folder is not None and (path := folder / f"{stage}.yaml").exists():
            fields.update(load_yaml(path))
            source = str(path)
        if stage in overrides:
            fields.update(overrides[stage])
            source += f" + executor.profiles.{stage}"
        profiles[stage] = _validated(stage, fields, source)
    return profiles


def _validated(stage: str, fields: dict[str, Any], source: str) -> JobProfile:
    try:
        profile = JobProfile.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{source} [{stage}]")) from e
    if profile.kind != "train" and (profile.nodes > 1 or profile.nproc_per_node > 1):
        raise ConfigError(
            f"{source} [{stage}]: nodes/nproc_per_node apply to kind 'train' only "
            f"(this profile is kind {profile.kind!r})"
        )
    if profile.kind != "sharded" and profile.shards > 1:
        raise ConfigError(
            f"{source} [{stage}]: shards apply to kind 'sharded' only "
            f"(this profile is kind {profile.kind!r})"
        )
    if profile.kind == "train" and profile.gpus and profile.nproc_per_node > profile.gpus:
        raise ConfigError(
            f"{source} [{stage}]: nproc_per_node={profile.nproc_per_node} exceeds gpus="
            f"{profile.gpus}: one process per GPU"
        )
    return profile
