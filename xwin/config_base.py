"""Building blocks of every config section, kept apart from `xwin.config` so that stage
modules can import them without importing every other stage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class UserError(Exception):
    """Bad input (config, data, arguments): retrying cannot help, so stages exit with code 2 and
    the controller fails fast instead of retrying."""


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names the file and the field."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreConfig(StrictModel):
    """Where artifacts live. Credentials never go here: boto3 reads them from the standard AWS
    environment (AWS_ACCESS_KEY_ID, ...), which a Kubernetes Secret fills in a cluster."""

    kind: Literal["local", "s3"] = "local"
    root: Path = Field(Path(".xwin/store"), description="local backend: the store's folder")
    endpoint_url: str | None = Field(None, description="s3: custom endpoint (MinIO, moto)")
    bucket: str | None = Field(None, description="s3: bucket name")
    prefix: str = Field("xwin", description="s3: key prefix inside the bucket")
    region: str | None = Field(None, description="s3: region name")
    max_attempts: int = Field(5, ge=1, description="retries on throttling, 5xx, connection errors")
    multipart_chunk_mb: int = Field(64, ge=5, description="s3: multipart part size")


def digest(obj: Any) -> str:
    """A stable short sha256 of any JSON-able object (configs, input digests)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`--set a.b.c=value` pairs to a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. sft.learning_rate=1e-5")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set twice")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such config file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data
