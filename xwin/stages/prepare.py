"""Stage `prepare`: not implemented yet."""

from __future__ import annotations

from xwin.config_base import StrictModel
from xwin.stages.base import StageContext

INPUTS: tuple[str, ...] = ()


class PrepareConfig(StrictModel):
    pass


def run(config: PrepareConfig, ctx: StageContext) -> dict[str, float]:
    raise NotImplementedError("stage prepare")
