"""Building blocks of every config section: the strict base model (unknown keys and non-finite
numbers are errors), YAML loading, `--set` overrides and validation messages that name the file
and the field. Kept apart from `xwin.config` (the pipeline config) so that every layer can build
typed configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from xwin.core.errors import ConfigError

# The attention kernels a config can name for the models it loads (transformers'
# attn_implementation): sdpa is torch's own and runs everywhere; flash_attention_2 needs CUDA and
# the flash-attn package (xwin.models.loading refuses it elsewhere).
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
ATTN_DESCRIPTION = ("attention kernel of the models this stage loads: sdpa (torch's, the default), eager "
                    "(plain matmuls), flash_attention_2 (needs CUDA and the flash-attn package)")


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, and so are `.inf` and `.nan` in a
    float field (`epochs: .inf` would train forever, `beta: .nan` poisons every loss)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:  # a tag (`!!python/object`), an unclosed bracket, ...
            raise ConfigError(f"--set {item!r}: not a YAML value: {_yaml_problem(e)}") from None
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line, without the `in "<unicode string>"` context lines."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{err.problem}{where}"
    return str(err).replace("\n", " ")


def load_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; errors name the file (and the line)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such {what}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data
