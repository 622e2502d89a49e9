"""DeepSpeed set-up from a TrainConfig: the engine's config, the optimizer, the LR schedule, and
model loading that shards weights at load time under ZeRO-3."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from xwin.core.hardware import bf16_is_fast
from xwin.models.device import place_model
from xwin.train.config import TrainConfig
from xwin.train.launch import ProcessPlace


def use_bf16(config: TrainConfig) -> bool:
    if config.bf16 == "auto":
        return bf16_is_fast()
    return bool(config.bf16)


def load_dtype(config: TrainConfig) -> str:
    """The dtype weights are loaded in (DeepSpeed keeps fp32 master weights in the optimizer)."""
    return "bfloat16" if use_bf16(config) else "float32"


def deepspeed_config(config: TrainConfig, place: ProcessPlace) -> dict:
    pin = torch.cuda.is_available()
    zero: dict = {"stage": config.zero_stage}
    if config.zero_stage >= 2:
        zero.update(overlap_comm=pin, contiguous_gradients=True)
    if config.zero_stage == 3:
        # gathered 16-bit weights let save_16bit_model / GatheredParameters export a whole model
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if config.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.micro_batch_size * config.gradient_accumulation_steps * place.world_size,
        "gradient_clipping": config.max_grad_norm,
        "bf16": {"enabled": use_bf16(config)},
        "zero_optimization": zero,
        # our optimizer is torch's AdamW (or DeepSpeed's CPU Adam when offloading)
        "zero_allow_untested_optimizer": True,
        # without a shared filesystem every node must write the files its ranks need to resume
        "checkpoint": {"use_node_local_storage": place.nnodes > 1},
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }


@contextlib.contextmanager
def sharded_model_init(config: TrainConfig, place: ProcessPlace) -> Iterator[None]:
    """Under ZeRO-3, models built or loaded inside this block are sharded as they load (each rank
    holds 1/N of the weights): how a 70B model fits where one full copy would not."""
    if config.zero_stage != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    # transformers looks this object up through a weak reference while from_pretrained runs
    hf_ds_config = HfDeepSpeedConfig(deepspeed_config(config, place))
    try:
        yield
    finally:
        del hf_ds_config


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: decaying norms' gains and biases hurts (GPT-2/Llama practice)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # ZeRO-3 partitions params to empty tensors; ds_shape keeps the real shape
        shape = getattr(param, "ds_shape", param.shape)
        (decay if len(shape) >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    kwargs = {"lr": config.learning_rate, "betas": tuple(config.adam_betas), "eps": config.adam_eps}
    if config.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    if config.warmup_steps is not None:
        return min(config.warmup_steps, total_steps)
    return math.ceil(config.warmup_ratio * total_steps)


def lr_multiplier(step: int, total_steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup from ~0 to 1, then cosine/linear decay to min_ratio (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant" or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def make_scheduler(config: TrainConfig, total_steps: int):
    """A factory DeepSpeed calls with its own (wrapped) optimizer."""
    warmup = warmup_steps(config, total_steps)

    def factory(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(step, total_steps, warmup, config.lr_scheduler, config.min_lr_ratio),
        )

    return factory


def build_engine(model: torch.nn.Module, config: TrainConfig, place: ProcessPlace, total_steps: int):
    """A DeepSpeed engine that trains `model`: forward = model(...), engine.backward/step."""
    import deepspeed

    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        # non-reentrant: works with frozen inputs and ZeRO-3's parameter hooks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=make_optimizer(model, config),
        lr_scheduler=make_scheduler(config, total_steps),
        config=deepspeed_config(config, place),
    )
    return engine


def build_frozen_engine(model: torch.nn.Module, config: TrainConfig, place: ProcessPlace, device):
    """A model used for inference only next to the trained one (DPO's online reference): under
    ZeRO-3 an optimizer-less engine that keeps it sharded, else the plain module on the device."""
    model.requires_grad_(False)
    model.eval()
    if config.zero_stage != 3:
        return place_model(model.to(torch.bfloat16 if use_bf16(config) else torch.float32), device)
    import deepspeed

    ds_config = deepspeed_config(config, place)
    ds_config["zero_optimization"] = {"stage": 3}
    if config.offload_params:
        ds_config["zero_optimization"]["offload_param"] = {"device": "cpu"}
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    return engine
