"""Config of the `rm` stage, trained by `xwin.train.rm`. No torch here: the controller reads it
to plan a run."""

from __future__ import annotations

from pydantic import Field

from xwin.train.config import PairTrainConfig


class RmConfig(PairTrainConfig):
    """Defaults after Llama-2's and InstructGPT's reward models: one epoch (more overfits), a small
    learning rate. micro_batch_size counts pairs (two sequences each)."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs (more than one overfits)")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of pairs held out for accuracy")
    use_score_margin: bool = Field(
        False, description="Llama-2 margin: subtract chosen_score - rejected_score inside the loss"
    )
