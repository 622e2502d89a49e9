"""Stage `sample`: not implemented yet."""

from __future__ import annotations

from xwin.config_base import StrictModel
from xwin.stages.base import StageContext

INPUTS: tuple[str, ...] = ()


class SampleConfig(StrictModel):
    pass


def run(config: SampleConfig, ctx: StageContext) -> dict[str, float]:
    raise NotImplementedError("stage sample")
