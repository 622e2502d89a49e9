"""Config of the `dpo` stage, trained by `xwin.train.dpo`. No torch here: the controller reads
it to plan a run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xwin.train.config import TrainConfig


class DpoConfig(TrainConfig):
    """Defaults after Zephyr/Tulu-style full DPO of 7B models: beta 0.1, a very small learning
    rate with 10% warmup, one epoch."""

    learning_rate: float = Field(5e-7, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs")
    micro_batch_size: int = Field(2, ge=1, description="pairs per process per forward pass")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of the steps spent warming up")
    batching: Literal["length_grouped", "random"] = Field(
        "length_grouped", description="pairs are never packed: length_grouped or random"
    )
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of pairs held out")
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="conservative DPO: assumed share of flipped labels (sigmoid only)"
    )
    loss_type: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid = DPO, ipo = IPO")
    reference: Literal["precompute", "online"] = Field(
        "precompute", description="precompute reference log-probs once (less memory) or run a frozen copy"
    )
