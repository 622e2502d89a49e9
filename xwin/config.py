"""The pipeline config: a YAML file, overridden by XWIN_* environment variables, overridden by
`--set section.field=value`. Sections `run`, `store`, `executor` and `tracking` (the default of
every training stage's `tracking`), then one section per row of
the stage table, typed by the row's config class (kept beside the code that reads it, as TRL
keeps `dpo_config.py` beside `dpo_trainer.py`).

    XWIN_SFT__LEARNING_RATE=2e-5 xwin run examples/demo-cpu.yaml --set dpo.beta=0.2
"""

from __future__ import annotations

import contextvars
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from xwin.artifacts.config import StoreConfig
from xwin.core.config import StrictModel, format_validation_error, load_yaml, parse_overrides
from xwin.core.errors import ConfigError
from xwin.executors.kubernetes.settings import KubernetesConfig
from xwin.executors.profiles import DEFAULT_IMAGES
from xwin.stages.registry import STAGES
from xwin.train.config import TrackingConfig

__all__ = ["ConfigError", "PipelineConfig", "RunConfig", "ExecutorConfig", "load_config"]


class RunConfig(StrictModel):
    name: str = Field("xwin", description="run name; runs are listed by it")
    id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="a stable run id (`xwin run --run-id`, $XWIN_RUN_ID; the Helm chart sets it "
        "from the release and the config): when that run exists, `xwin run` resumes it instead of starting a "
        "new one, so a restarted controller adopts its running stages. None: `<name>-<UTC time>`")
    workdir: Path = Field(Path(".xwin"), description="local scratch, logs and run state")
    only: list[str] = Field(default_factory=list, description="run just these stages")
    start_from: str | None = Field(None, description="skip stages before this one (--from)")
    until: str | None = Field(None, description="stop after this stage (--until)")
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="stage name -> existing artifact key or local path used instead of running it",
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="rewire one stage input: `<stage>.<input>` -> `<stage>[#path]`, an artifact "
        "key or a local path; e.g. `rm.model: prepare#base_model` trains the RM from the base",
    )
    max_attempts: int = Field(2, ge=1, description="attempts per stage for transient failures")
    retry_backoff_s: float = Field(5.0, ge=0)
    outage_backoff_max_s: float = Field(
        60.0, gt=0, description="while the store or the Kubernetes API is unreachable (beyond "
        "its client's own retries) the controller waits, doubling the pause up to this")
    outage_patience_s: float = Field(
        600.0, ge=0, description="how long an outage may last before the controller gives up "
        "(the record says why; `xwin resume` continues)")
    lease_ttl_s: float = Field(
        60.0, gt=0, description="a controller's lease on its run, and a run's reservation of the "
        "content key a stage is producing, lapse this long after their last renewal; another "
        "controller may then take over (keep it well above the machines' clock skew)")
    lease_renew_s: float = Field(
        15.0, gt=0, description="how often the holder renews its leases; under lease_ttl_s, "
        "so a renewal may fail and be retried before the lease lapses")
    key_wait_max_s: float = Field(
        30.0, gt=0, description="a run whose stage needs a key another run is producing looks "
        "again after 0.5 s, doubling up to this")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> RunConfig:
        if self.lease_renew_s >= self.lease_ttl_s:
            raise ValueError(f"run.lease_renew_s ({self.lease_renew_s}) must be under "
                             f"run.lease_ttl_s ({self.lease_ttl_s})")
        return self


class ExecutorConfig(StrictModel):
    kind: Literal["local", "kubernetes"] = "local"
    namespace: str = "xwin"
    # Job profiles (image, resources, nodes, shards, ...) live in jobs/*.yaml; this names the
    # folder, and `profiles` overrides single fields per stage.
    profiles_dir: Path = Path("jobs")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    images: dict[Literal["trainer", "sampler"], str] = Field(
        default_factory=lambda: dict(DEFAULT_IMAGES),
        description="the image of each role a stage's row names (trainer: torch + DeepSpeed, "
        "sampler: vLLM); a profile's own `image` wins")
    local_parallel_shards: bool = Field(
        False, description="local: run shards of a sharded stage as parallel processes"
    )
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig, description="cluster-side settings of stage pods"
    )


# The YAML file a PipelineConfig is being built from; a context variable so that
# settings_customise_sources (a classmethod pydantic-settings calls) can see it.
_yaml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("xwin_yaml", default=None)


class _EnvSource(EnvSettingsSource):
    """XWIN_* variables, as pydantic-settings reads them, except that a value that should be JSON
    (a list, a mapping, a section) and is not is a ConfigError naming the variable."""

    def decode_complex_value(self, field_name: str, field, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except json.JSONDecodeError as e:
            suffix = field_name.lower()
            names = sorted(name.upper() for name, v in self.env_vars.items()
                           if v == value and name.lower().endswith(suffix))
            raise ConfigError(f"environment variable {' or '.join(names) or field_name}: not valid "
                              f"JSON ({e.msg} at column {e.colno})") from None


class _PipelineSettings(BaseSettings):
    """The sections every pipeline has; `PipelineConfig` adds one per stage."""

    model_config = SettingsConfigDict(
        env_prefix="XWIN_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    run: RunConfig = Field(default_factory=RunConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="experiment trackers (MLflow, W&B) of every training stage whose own section sets none",
    )

    @model_validator(mode="after")
    def _trainers_default_to_the_pipeline_tracking(self):
        """A training stage whose section sets no `tracking` takes the pipeline's; resolved here,
        once, so the run record (and so `xwin resume`) holds each stage's own."""
        for stage in STAGES:
            section = getattr(self, stage.name, None)
            if stage.trains and section is not None and "tracking" not in section.model_fields_set:
                section.tracking = self.tracking.model_copy(deep=True)
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_):
        # Highest first: --set (init kwargs), XWIN_* environment, the YAML file.
        sources = [init_settings, _EnvSource(settings_cls)]
        if (path := _yaml_file.get()) is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


# One section per stage, in pipeline order: `config.sft`, `config.dpo.beta`, ...
PipelineConfig = create_model(
    "PipelineConfig",
    __base__=_PipelineSettings,
    __doc__="The whole pipeline config: run, store, executor and one section per stage.",
    **{stage.name: (stage.config, Field(default_factory=stage.config, description=stage.summary))
       for stage in STAGES},
)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PipelineConfig:
    """Build and validate a pipeline config; errors name the file and the field."""
    if path is not None:
        load_yaml(Path(path))  # clear errors for a missing file or bad YAML before pydantic's
    token = _yaml_file.set(Path(path) if path is not None else None)
    try:
        return PipelineConfig(**parse_overrides(list(overrides)))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path or "<environment>"))) from e
    except SettingsError as e:  # the XWIN_* environment could not be read
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise ConfigError(f"XWIN_* environment: {e}: {e.__cause__}") from None
    finally:
        _yaml_file.reset(token)
