"""Stage `eval`: not implemented yet."""

from __future__ import annotations

from xwin.config_base import StrictModel
from xwin.stages.base import StageContext

INPUTS: tuple[str, ...] = ()


class EvalConfig(StrictModel):
    pass


def run(config: EvalConfig, ctx: StageContext) -> dict[str, float]:
    raise NotImplementedError("stage eval")
