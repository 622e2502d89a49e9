"""Stage `sft`: not implemented yet."""

from __future__ import annotations

from xwin.config_base import StrictModel
from xwin.stages.base import StageContext

INPUTS: tuple[str, ...] = ()


class SftConfig(StrictModel):
    pass


def run(config: SftConfig, ctx: StageContext) -> dict[str, float]:
    raise NotImplementedError("stage sft")
