"""The training settings every training stage shares. Each stage's config subclasses TrainConfig
(so a pipeline YAML reads `sft.learning_rate`, `dpo.beta`, ...) and overrides the defaults that
differ per stage. Defaults are sized for real runs (7B-class, many GPUs); tests and the CPU demo
pass small values."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xwin.core.config import StrictModel


class MlflowConfig(StrictModel):
    """An MLflow run per training stage. Credentials (MLFLOW_TRACKING_TOKEN, _USERNAME, _PASSWORD)
    come from the environment, as MLflow reads them; never from here."""

    tracking_uri: str = Field(
        ..., min_length=1,
        description="MLflow tracking URI: http(s)://server, or file:/path for a local store that needs no server",
    )
    experiment: str = Field(
        "xwin", min_length=1, description="experiment the runs are filed under (created if missing)"
    )


class WandbConfig(StrictModel):
    """A W&B run per training stage, grouped by pipeline run. The API key comes from the
    environment (WANDB_API_KEY), as wandb reads it; never from here."""

    project: str = Field(..., min_length=1, description="W&B project")
    entity: str | None = Field(None, description="W&B team or user; None: the key's default entity")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline: the run is written to a local folder (wandb sync uploads it later)"
    )
    dir: str | None = Field(None, description="folder for wandb's files; None: the stage's workdir")


class TrackingConfig(StrictModel):
    """Where training metrics go besides metrics.jsonl (which the report reads) and TensorBoard
    event files (always written, shipped in the stage's artifact under tensorboard/). Each
    tracker is optional, imported only when set, and a failing one never stops training."""

    mlflow: MlflowConfig | None = Field(None, description="log to MLflow (pip install xwin[tracking])")
    wandb: WandbConfig | None = Field(None, description="log to Weights & Biases (pip install xwin[tracking])")


class TrainConfig(StrictModel):
    # -- optimisation
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(3.0, gt=0, description="passes over the training data (fractions allowed)")
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps to run; overrides epochs when set"
    )
    micro_batch_size: int = Field(
        4, ge=1, description="examples per process per forward pass (RM/DPO: pairs)"
    )
    gradient_accumulation_steps: int = Field(
        8, ge=1, description="micro-batches per optimizer step; global batch = micro x accum x processes"
    )
    max_length: int = Field(4096, ge=8, description="tokens per sequence (longer ones are cut)")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="decay after warmup, down to min_lr_ratio x learning_rate"
    )
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="share of the steps spent warming up")
    warmup_steps: int | None = Field(None, ge=0, description="warmup steps; overrides warmup_ratio")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a share of the peak")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on norms/biases)")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 = off)")
    seed: int = Field(42, description="seeds the model head init, data order and dropout")

    # -- batching
    batching: Literal["length_grouped", "packed", "random"] = Field(
        "length_grouped",
        description="length_grouped: batches of similar lengths (less padding); packed: several "
        "conversations per row with attention kept inside each (SFT/RS only); random: plain shuffle",
    )
    eval_fraction: float = Field(
        0.02, ge=0, lt=1, description="share of the data held out for evaluation"
    )

    # -- DeepSpeed
    zero_stage: Literal[0, 1, 2, 3] = Field(3, description="ZeRO stage: 3 shards weights too")
    offload_optimizer: bool = Field(False, description="keep optimizer states in CPU memory")
    offload_params: bool = Field(False, description="ZeRO-3: keep weights in CPU memory")
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bfloat16 weights/activations; auto = where the GPU or CPU runs it "
        "natively (emulated bf16 on a CPU without AVX512_BF16/AMX is many times slower than fp32)"
    )
    gradient_checkpointing: bool = Field(
        True, description="recompute activations in backward: much less memory, ~30% slower"
    )

    # -- bookkeeping
    log_every: int = Field(10, ge=1, description="optimizer steps between log lines")
    eval_every: int = Field(200, ge=0, description="optimizer steps between evaluations (0 = only at the end)")
    save_every: int = Field(
        500, ge=0, description="optimizer steps between checkpoints committed to the store (0 = none)"
    )
    resume: bool = Field(True, description="continue from the last committed checkpoint, if any")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="experiment trackers beside metrics.jsonl and TensorBoard (MLflow, W&B); not in the stage's key",
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> TrainConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self
