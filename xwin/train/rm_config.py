"""Config of the `rm` stage, trained by `xwin.train.rm`. No torch here: the controller reads it
to plan a run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xwin.train.config import TrainConfig


class RmConfig(TrainConfig):
    """Defaults after Llama-2's and InstructGPT's reward models: one epoch (more overfits), a small
    learning rate. micro_batch_size counts pairs (two sequences each)."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs (more than one overfits)")
    micro_batch_size: int = Field(2, ge=1, description="pairs per process per forward pass")
    batching: Literal["length_grouped", "random"] = Field(
        "length_grouped", description="pairs are never packed: length_grouped or random"
    )
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of pairs held out for accuracy")
    use_score_margin: bool = Field(
        False, description="Llama-2 margin: subtract chosen_score - rejected_score inside the loss"
    )
