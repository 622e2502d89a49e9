"""Configs of the `sft` and `rs` stages, both trained by `xwin.train.sft`. No torch here: the
controller reads these to plan a run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xwin.train.config import TrainConfig


class SftConfig(TrainConfig):
    """Defaults follow common Llama-2 chat SFT practice (the Xwin-LM paper gives no exact values)."""

    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(3.0, gt=0, description="passes over the conversations")
    batching: Literal["length_grouped", "packed", "random"] = Field(
        "packed",
        description="packed: several conversations per row, attention kept inside each",
    )


class RsConfig(TrainConfig):
    """Continues from the SFT model on its own best samples: a lower peak rate and fewer epochs
    than SFT (the data is on-policy and the model already fits its format)."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(2.0, gt=0, description="passes over the best-of-N conversations")
    batching: Literal["length_grouped", "packed", "random"] = Field(
        "packed", description="packed: several conversations per row, attention kept inside each"
    )
