"""Stage `select`: not implemented yet."""

from __future__ import annotations

from xwin.config_base import StrictModel
from xwin.stages.base import StageContext

INPUTS: tuple[str, ...] = ()


class SelectConfig(StrictModel):
    pass


def run(config: SelectConfig, ctx: StageContext) -> dict[str, float]:
    raise NotImplementedError("stage select")
