"""Stage `sft`: supervised finetuning on multi-turn conversations, loss on assistant tokens only
(Xwin-LM-SFT). The rs stage runs the same code on the best-of-N responses.

Inputs: `model` (HF folder: the base model) and `train` (conversations JSONL, a file, a folder or
a sharded artifact). Output: an HF folder (safetensors + tokenizer + metrics.jsonl).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xwin.artifacts.stage_io import StageContext
from xwin.train.config import TrainConfig

INPUTS: tuple[str, ...] = ("model", "train")


class SftConfig(TrainConfig):
    """Defaults follow common Llama-2 chat SFT practice (the Xwin-LM paper gives no exact values)."""

    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(3.0, gt=0, description="passes over the conversations")
    batching: Literal["length_grouped", "packed", "random"] = Field(
        "packed",
        description="packed: several conversations per row, attention kept inside each",
    )


def run(config: SftConfig, ctx: StageContext) -> dict[str, float]:
    # imported here: the controller reads this module's config without torch
    from xwin.train.harness import run_distributed
    from xwin.train.sft import finetune

    return run_distributed(ctx, lambda plan, device: finetune(config, ctx, plan, device))
