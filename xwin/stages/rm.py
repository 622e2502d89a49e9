"""Stage `rm`: the reward model (Xwin-RM). The body of a language model with a scalar value head,
trained on preference pairs with the Bradley-Terry loss; both replies of a pair go through one
forward pass. Multi-turn contexts are kept (the oldest turns give way when too long).

Inputs: `model` (HF folder: the SFT model or the base) and `train` (PreferencePair JSONL).
Output: a reward-model folder (`xwin.models.reward.load_reward_model` loads it) with held-out
pairwise accuracy and reward statistics in its metrics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xwin.artifacts.stage_io import StageContext
from xwin.train.config import TrainConfig

INPUTS: tuple[str, ...] = ("model", "train")


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


def run(config: RmConfig, ctx: StageContext) -> dict[str, float]:
    # imported here: the controller reads this module's config without torch
    from xwin.train.harness import run_distributed
    from xwin.train.rm import train_reward_model

    return run_distributed(ctx, lambda plan, device: train_reward_model(config, ctx, plan, device))
