"""Stage `rs`: rejection-sampling finetuning (Xwin-LM-RS). SFT, same loop and code, on the
conversations the select stage built from each prompt's best-of-N response.

Inputs: `model` (HF folder: the SFT model) and `train` (conversations JSONL from select).
Output: an HF folder like sft's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xwin.artifacts.stage_io import StageContext
from xwin.train.config import TrainConfig

INPUTS: tuple[str, ...] = ("model", "train")


class RsConfig(TrainConfig):
    """Continues from the SFT model on its own best samples: a lower peak rate and fewer epochs
    than SFT (the data is on-policy and the model already fits its format)."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(2.0, gt=0, description="passes over the best-of-N conversations")
    batching: Literal["length_grouped", "packed", "random"] = Field(
        "packed", description="packed: several conversations per row, attention kept inside each"
    )


def run(config: RsConfig, ctx: StageContext) -> dict[str, float]:
    # imported here: the controller reads this module's config without torch
    from xwin.train.harness import run_distributed
    from xwin.train.sft import finetune

    return run_distributed(ctx, lambda plan, device: finetune(config, ctx, plan, device))
