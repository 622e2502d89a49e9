"""The Xwin-LM stages. Each module defines a typed `Config`-style model, the names of its
`INPUTS`, and `run(config, ctx) -> metrics`; `xwin stage NAME --config FILE` is the only way
they are started, locally or in a Kubernetes Job."""

from __future__ import annotations

import importlib
from types import ModuleType

# Pipeline order. `prepare` imports the run's raw sources (base model, data) into the store.
STAGE_NAMES = ("prepare", "sft", "rm", "sample", "score", "select", "rs", "dpo", "eval", "annotate")


def stage_module(name: str) -> ModuleType:
    if name not in STAGE_NAMES:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")
    return importlib.import_module(f"xwin.stages.{name}")
