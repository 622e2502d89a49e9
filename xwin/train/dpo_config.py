"""Config of the `dpo` stage, trained by `xwin.train.dpo`. No torch here: the controller reads
it to plan a run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xwin.train.config import PairTrainConfig

SIMPO_DEFAULT_BETA = 2.0  # the SimPO paper tunes beta in 2 to 10; its reference recipe starts at 2


class DpoConfig(PairTrainConfig):
    """Defaults after Zephyr/Tulu-style full DPO of 7B models: beta 0.1, a very small learning
    rate with 10% warmup, one epoch."""

    learning_rate: float = Field(5e-7, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of the steps spent warming up")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of pairs held out")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "simpo"] = Field(
        "sigmoid",
        description="sigmoid = DPO, ipo = IPO, hinge = RSO, robust = robust DPO (label_smoothing = flip rate), "
        "simpo = SimPO (reference-free: no reference model or log-probs; length-normalised log-probs)",
    )
    beta: float = Field(
        0.1, gt=0,
        description="strength of the pull towards the reference; simpo: the reward scale, 2 to 10 in the "
        "paper, and 2.0 when not set (0.1 would leave SimPO's length-normalised margins near zero)",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="assumed share of flipped labels: conservative DPO (sigmoid) or robust DPO (robust) only",
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo only: the target reward margin (the paper's gamma)")
    rpo_alpha: float | None = Field(
        None, ge=0, description="RPO: add rpo_alpha x the chosen reply's per-token NLL to the loss (None = off)"
    )
    reference: Literal["precompute", "online"] = Field(
        "precompute",
        description="precompute reference log-probs once (less memory) or run a frozen copy at every step "
        "(with lora: the policy with its adapters off, no copy); simpo has none",
    )

    @property
    def needs_reference(self) -> bool:
        """False for a reference-free loss: the trainer then neither loads nor runs a reference."""
        return self.loss_type != "simpo"

    @model_validator(mode="after")
    def _loss_settings_fit_the_loss(self) -> DpoConfig:
        if self.loss_type == "simpo" and "beta" not in self.model_fields_set:
            self.beta = SIMPO_DEFAULT_BETA
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            raise ValueError(
                f"label_smoothing is for loss_type sigmoid or robust, not {self.loss_type}; set it to 0"
            )
        if not self.needs_reference and self.reference == "online":
            raise ValueError(f"loss_type {self.loss_type} uses no reference model; drop reference: online")
        return self
