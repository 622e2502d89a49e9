"""Per-stage Job profiles: the stage table's kind and image, then jobs/<stage>.yaml, then the
pipeline config's `executor.profiles` overrides. Both executors read them: the launch
description takes nodes x nproc_per_node and shards from them, the Kubernetes executor also the
pod's image, resources and scheduling.

Secrets never appear in a profile: a variable whose name says it holds one (`*_KEY`, `*_TOKEN`,
`*_SECRET`, `*PASSWORD*`) is refused as a literal `env` value and is given as `secret_env`, a
reference to a key of a Kubernetes Secret that the pod reads through `secretKeyRef`. The local
executor passes its own environment to the stage processes, so there the same variable comes
from the environment the controller was started with."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from xwin.core.config import StrictModel, format_validation_error, load_yaml
from xwin.core.errors import ConfigError
from xwin.stages.registry import STAGE_NAMES, stage_def

log = logging.getLogger(__name__)


# Names of variables that hold credentials: these never take a literal value in a profile.
SECRET_LIKE_NAME = re.compile(r"(_KEY|_TOKEN|_SECRET)$|PASSWORD", re.IGNORECASE)


class SecretEnv(StrictModel):
    """One environment variable read from a key of a Kubernetes Secret (in the stage's
    namespace), e.g. `XWIN_JUDGE_API_KEY: {secret: xwin-judge, key: api-key}`."""

    secret: str = Field(min_length=1, description="name of the Secret in the stage's namespace")
    key: str = Field(min_length=1, description="key inside the Secret")
    optional: bool = Field(
        False, description="start the pod even when the Secret or key is missing (the variable "
        "is then unset); otherwise the pod waits in CreateContainerConfigError until it exists")


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
    env: dict[str, str] = Field(
        default_factory=dict, description="literal variables of every process; never a secret "
        "(see secret_env)")
    secret_env: dict[str, SecretEnv] = Field(
        default_factory=dict, description="variables read from Kubernetes Secrets (valueFrom."
        "secretKeyRef); the local executor takes them from its own environment")
    kind: Literal["train", "sharded", "single"] = "single"


# The images a stage's row can name (its `image`); `executor.images` replaces them.
DEFAULT_IMAGES: dict[str, str] = {"trainer": "xwin-trainer:dev", "sampler": "xwin-sampler:dev"}

# Not a stage: the profile of the vLLM judge server an eval or annotate stage gets on Kubernetes
# (jobs/judge-server.yaml, executor.profiles.judge-server); it runs the sampler image.
JUDGE_SERVER = "judge-server"


def load_profiles(
    profiles_dir: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    images: Mapping[str, str] | None = None,
) -> dict[str, JobProfile]:
    """One JobProfile per stage: defaults (the kind and image its row names) < jobs/<stage>.yaml
    < overrides[stage] (field by field). `images`: image role -> image (DEFAULT_IMAGES).

    A missing folder means defaults (a local run started outside the repository needs none);
    a bad file or an override for an unknown stage is an error naming it."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(STAGE_NAMES) - {JUDGE_SERVER})
    if unknown:
        raise ConfigError(
            f"executor.profiles: unknown stage(s) {', '.join(unknown)}; stages are: "
            f"{', '.join(STAGE_NAMES)} (and {JUDGE_SERVER})"
        )
    folder = Path(profiles_dir) if profiles_dir is not None else None
    if folder is not None and not folder.is_dir():
        log.info("no Job profile folder %s; using default profiles", folder)
        folder = None
    if folder is not None:
        strays = sorted(p.name for p in folder.glob("*.yaml")
                        if p.stem not in STAGE_NAMES and p.stem != JUDGE_SERVER)
        if strays:
            raise ConfigError(f"{folder}: {', '.join(strays)} name no stage; stages are: "
                              f"{', '.join(STAGE_NAMES)}")
    profiles = {}
    for stage in STAGE_NAMES:
        row = stage_def(stage)
        fields: dict[str, Any] = {"kind": row.kind, "image": {**DEFAULT_IMAGES, **(images or {})}[row.image]}
        source = "defaults"
        if folder is not None and (path := folder / f"{stage}.yaml").exists():
            fields.update(load_yaml(path))
            source = str(path)
        if stage in overrides:
            fields.update(overrides[stage])
            source += f" + executor.profiles.{stage}"
        profiles[stage] = _validated(stage, fields, source)
    return profiles


def load_judge_server_profile(
    profiles_dir: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    images: Mapping[str, str] | None = None,
) -> JobProfile:
    """The judge server's profile, layered as a stage's: the sampler image (vLLM) <
    jobs/judge-server.yaml < overrides["judge-server"]. Its kind is always single (one pod)."""
    fields: dict[str, Any] = {"kind": "single",
                              "image": {**DEFAULT_IMAGES, **(images or {})}["sampler"]}
    source = "defaults"
    path = Path(profiles_dir) / f"{JUDGE_SERVER}.yaml" if profiles_dir is not None else None
    if path is not None and path.is_file():
        fields.update(load_yaml(path))
        source = str(path)
    if JUDGE_SERVER in (overrides or {}):
        fields.update(overrides[JUDGE_SERVER])
        source += f" + executor.profiles.{JUDGE_SERVER}"
    profile = _validated(JUDGE_SERVER, fields, source)
    if profile.kind != "single":
        raise ConfigError(f"{source} [{JUDGE_SERVER}]: kind must be single (one server pod)")
    return profile


def _validated(stage: str, fields: dict[str, Any], source: str) -> JobProfile:
    try:
        profile = JobProfile.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{source} [{stage}]")) from e
    _check_no_literal_secrets(stage, profile, source)
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


def _check_no_literal_secrets(stage: str, profile: JobProfile, source: str) -> None:
    """A credential written into a profile would land in the Job spec, the rendered manifests
    and every copy of the config; it must come from a Secret instead."""
    for name in profile.env:
        if SECRET_LIKE_NAME.search(name):
            raise ConfigError(
                f"{source} [{stage}]: env.{name}: a literal value for a variable that holds a "
                f"secret; give it as secret_env.{name}: {{secret: SECRET_NAME, key: KEY}} (a "
                "Kubernetes Secret) and, for the local executor, set it in the environment"
            )
        if name in profile.secret_env:
            raise ConfigError(f"{source} [{stage}]: env.{name}: also set in secret_env; give "
                              "it once")
