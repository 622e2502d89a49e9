"""`xwin stage NAME --config SPEC`: the one entry point of every stage, in a container or a
local process alike."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from xwin.artifacts.stage_io import StageContext, StageSpec, parse_shard
from xwin.core.config import format_validation_error
from xwin.core.errors import EXIT_USER_ERROR, ConfigError, UserError
from xwin.stages import stage_module

log = logging.getLogger("xwin.stage")



def stage_config_class(name: str):
    """The typed config of stage `name`: the type of its section in PipelineConfig."""
    from xwin.config import PipelineConfig

    return PipelineConfig.model_fields[name].annotation


def run_stage(name: str, spec_path: Path, shard: str | None = None) -> dict[str, float]:
    spec = StageSpec.from_file(spec_path)
    if spec.stage != name:
        raise ConfigError(f"{spec_path}: spec is for stage {spec.stage!r}, not {name!r}")
    module = stage_module(name)
    try:
        config = stage_config_class(name).model_validate(spec.config)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{spec_path} [{name}]")) from e
    ctx = StageContext(spec, parse_shard(shard, spec.shards))
    return module.run(config, ctx) or {}


def main(name: str, spec_path: Path, shard: str | None = None) -> int:
    try:
        metrics = run_stage(name, spec_path, shard)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps({"stage": name, "metrics": metrics}))
    return 0
