"""`xwin stage NAME --config SPEC`: the one entry point of every stage, in a container or a
local process alike. It reads the stage's row, validates the spec's config section against the
row's config class, opens the stage's view of the store and calls the row's entry point."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from xwin.artifacts.stage_io import StageContext, StageSpec, parse_shard
from xwin.core.config import format_validation_error
from xwin.core.errors import EXIT_OK, EXIT_USER_ERROR, ConfigError, UserError
from xwin.stages.registry import stage_def

log = logging.getLogger("xwin.stage")


def run_stage(name: str, spec_path: Path, shard: str | None = None) -> dict[str, float]:
    stage = stage_def(name)
    spec = StageSpec.from_file(spec_path)
    if spec.stage != name:
        raise ConfigError(f"{spec_path}: spec is for stage {spec.stage!r}, not {name!r}")
    try:
        config = stage.config.model_validate(spec.config)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{spec_path} [{name}]")) from e
    ctx = StageContext(spec, parse_shard(shard, spec.shards))
    return stage.load_entry()(config, ctx) or {}


def main(name: str, spec_path: Path, shard: str | None = None) -> int:
    try:
        metrics = run_stage(name, spec_path, shard)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps({"stage": name, "metrics": metrics}))
    return EXIT_OK
