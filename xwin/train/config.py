"""The training settings every training stage shares. Each stage's config subclasses TrainConfig
(so a pipeline YAML reads `sft.learning_rate`, `dpo.beta`, ...) and overrides the defaults that
differ per stage. Defaults are sized for real runs (7B-class, many GPUs); tests and the CPU demo
pass small values.

`lora:` trains low-rank adapters (peft) instead of every weight, on a 16-bit base (LoRA) or a
4/8-bit quantized one (QLoRA, bitsandbytes, CUDA only); `attn_implementation` picks the
attention kernel. What either needs of the machine is checked where the stage will run
(`hardware_problems`): by the controller at plan time for the local executor, and by the stage
process itself before it loads anything."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, field_validator, model_validator

from xwin.core.config import ATTN_DESCRIPTION, AttnImplementation, StrictModel


class LoraSettings(StrictModel):
    """Low-rank adapters (LoRA, Hu et al. 2021) through peft; QLoRA (Dettmers et al. 2023) when
    the frozen base is quantized. The exported model is always a plain HF folder with the
    adapters merged in, so every later stage (and vLLM) loads it as if fully trained."""

    enabled: bool = Field(False, description="train LoRA adapters instead of every weight")
    r: int = Field(16, ge=1, description="rank of each adapter (the low-rank update is r x (in + out) weights)")
    alpha: float = Field(32.0, gt=0, description="adapter scale numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="modules that get adapters: 'all-linear' (peft: every linear layer but the output "
        "head), or a list of module names / a regex as peft's LoraConfig takes (e.g. [q_proj, v_proj])",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="biases that train too: none, all, or those of adapted layers (peft's `bias`)"
    )
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="QLoRA: load the frozen base quantized by bitsandbytes (4bit = NF4 with double "
        "quantization, computing in bf16); needs CUDA and the bitsandbytes package (the gpu extra)",
    )
    keep_adapter: bool = Field(
        False, description="also write the adapter alone (peft format) under adapter/ in the output"
    )


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
        "conversations per row with attention kept inside each (SFT/RS only; rm and dpo: padding_free); "
        "random: plain shuffle",
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
    attn_implementation: AttnImplementation = Field("sdpa", description=ATTN_DESCRIPTION)
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA / QLoRA adapters (peft)")

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
        if self.lora.quantize != "none" and not self.lora.enabled:
            raise ValueError(f"lora.quantize {self.lora.quantize} is QLoRA: it needs lora.enabled: true")
        if self.lora.quantize != "none" and self.zero_stage == 3:
            # ZeRO-3 would shard bitsandbytes' packed weights, which it cannot gather back into
            # quantized layers; a quantized base is small enough to sit whole on each GPU anyway
            raise ValueError("lora.quantize (QLoRA) does not combine with zero_stage 3; use zero_stage 0, 1 or 2")
        return self

    def hardware_problems(self) -> list[str]:
        """What this config needs that the machine running this process lacks (empty: nothing):
        QLoRA needs CUDA and bitsandbytes, flash_attention_2 CUDA and flash-attn. Importing
        nothing but what it checks, so the controller can ask at plan time."""
        from xwin.core.hardware import gpu_available

        needs = []
        if self.lora.enabled and self.lora.quantize != "none":
            needs += [("lora.quantize", self.lora.quantize, "bitsandbytes", "the gpu extra: pip install 'xwin[gpu]'")]
        if self.attn_implementation == "flash_attention_2":
            needs += [("attn_implementation", self.attn_implementation, "flash_attn", "pip install flash-attn")]
        problems = []
        for field, value, module, install in needs:
            if not gpu_available():
                problems.append(f"{field}: {value} needs a CUDA GPU, and this machine has none")
            elif importlib.util.find_spec(module) is None:
                problems.append(f"{field}: {value} needs the {module} package, which is not installed ({install})")
        return problems


class PairTrainConfig(TrainConfig):
    """What the pair stages (rm, dpo) share: micro-batches count pairs, and a micro-batch is
    either padded rows or one padding-free row (`padding_free`)."""

    micro_batch_size: int = Field(2, ge=1, description="pairs per process per forward pass")
    batching: Literal["length_grouped", "random"] = Field(
        "length_grouped",
        description="which pairs share a micro-batch: length_grouped or random (pairs are never packed "
        "across micro-batches; padding_free lays a micro-batch out without padding)",
    )
    padding_free: bool = Field(
        False,
        description="each micro-batch as one row: its 2 x micro_batch_size sequences back to back, no pad "
        "tokens, position ids restarting per sequence so attention stays inside each; the same log-probs "
        "and rewards as padded rows. Fastest with flash_attention_2 (varlen kernels, attention per "
        "sequence); sdpa and eager attend over the whole row under a block mask (cost grows with the "
        "row's square), which still pays while rows are short",
    )

    @field_validator("batching", mode="before")
    @classmethod
    def _pairs_are_not_packed(cls, value):
        if value == "packed":
            raise ValueError("batching 'packed' is for sft and rs; for rm and dpo set padding_free: true "
                             "(each micro-batch as one row without padding) and keep length_grouped or random")
        return value
