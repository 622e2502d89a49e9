"""LoRA and QLoRA for every trainer, through peft: the one place a stage's model gets its
adapters (`with_lora`), the reference that DPO reads off the same model with its adapters
switched off (`base_weights`), and the export that merges the adapters into a plain HF folder.

Wrapping. `peft.get_peft_model` freezes the base and adds r x (in + out) trainable weights to
each targeted linear layer; the adapters' second matrix starts at zero, so the wrapped model
computes exactly what the base does until the first step. Modules a stage names in
`fully_trained` (the reward model's value head) are trained whole (peft's modules_to_save).
For QLoRA the base arrives quantized (xwin.models.loading) and peft's
prepare_model_for_kbit_training readies it (norms in fp32, input gradients).

Export. The trained adapters are gathered on rank 0 (under ZeRO-3 each rank holds a shard of
them) and applied to a fresh copy of the base read from the input folder, unquantized, whose
peft `merge_and_unload` folds them into the weights: the output is the same kind of folder a
full finetune writes. `keep_adapter` also writes the adapter alone (peft's format) under
`adapter/`. Merging a QLoRA adapter into the 16-bit base is what the QLoRA recipe does; the
merged model then differs from the trained one by the base's quantization error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xwin.train.checkpoint import gathered_state_dict
from xwin.train.config import LoraSettings, TrainConfig

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


def peft_config(settings: LoraSettings, fully_trained: Sequence[str] = ()) -> LoraConfig:
    """peft's LoraConfig of our settings; modules in `fully_trained` get no adapter (peft would
    count a custom model's value head among 'all-linear') and train whole instead."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias=settings.bias,
        modules_to_save=list(fully_trained) or None,
        exclude_modules=list(fully_trained) or None,
    )


def with_lora(model: torch.nn.Module, settings: LoraSettings, *, gradient_checkpointing: bool,
              fully_trained: Sequence[str] = ()) -> PeftModel:
    """`model` with adapters (see the module docstring); only they (and `fully_trained`) train."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if settings.quantize != "none":
        # non-reentrant checkpointing, as the loop turns on (xwin.train.deepspeed_setup)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapped = get_peft_model(model, peft_config(settings, fully_trained))
    if gradient_checkpointing:
        # the frozen embeddings' outputs need requires_grad for checkpointed layers to reach the
        # adapters (reentrant checkpointing drops the gradient otherwise; harmless when not)
        wrapped.enable_input_require_grads()
    trainable, total = wrapped.get_nb_trainable_parameters()
    log.info("LoRA r=%d alpha=%g on %s: %d of %d parameters train (%.3f%%)", settings.r, settings.alpha,
             settings.target_modules, trainable, total, 100 * trainable / max(total, 1))
    return wrapped


def trainable_model(model: torch.nn.Module, config: TrainConfig,
                    fully_trained: Sequence[str] = ()) -> torch.nn.Module:
    """What a stage trains: `model` itself, or with `lora.enabled` the model with adapters."""
    if not config.lora.enabled:
        return model
    torch.manual_seed(config.seed)  # the adapters' random init: the same on every rank and every run
    return with_lora(model, config.lora, gradient_checkpointing=config.gradient_checkpointing,
                     fully_trained=fully_trained)


def lora_metrics(model: torch.nn.Module) -> dict[str, float]:
    """The parameter counts peft reports, for the stage's manifest; empty without adapters."""
    if not has_adapters(model):
        return {}
    trainable, total = model.get_nb_trainable_parameters()
    return {"lora_trainable_parameters": trainable, "lora_total_parameters": total,
            "lora_trainable_fraction": trainable / max(total, 1)}


def base_weights(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Inside this block `model` (or the engine around it) computes with its base weights alone:
    adapters switched off, no second copy of the model. A model without adapters is unchanged,
    so this is only meaningful where the base *is* the reference (LoRA)."""
    module = getattr(model, "module", model)  # a DeepSpeed engine holds the model as .module
    return module.disable_adapter() if has_adapters(module) else contextlib.nullcontext()


def has_adapters(model: torch.nn.Module) -> bool:
    # Without peft imported no model can be wrapped by it: stages without LoRA never import it
    # (several seconds in every training process).
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(getattr(model, "module", model), peft.PeftModel)


def adapter_writer(module: PeftModel, settings: LoraSettings, zero_stage: int, is_main: bool,
                   load_base: Callable[[], torch.nn.Module],
                   save_model: Callable[[torch.nn.Module, Path], None]) -> Callable[[Path], None]:
    """Collective (ZeRO-3 gathers the adapters' shards): returns the writer of the output folder
    (rank 0 only): `load_base()` builds the unquantized starting model on the CPU, the adapters
    are merged into it and `save_model(merged, folder)` writes it; `adapter/` when kept."""
    trained = gathered_state_dict(module, zero_stage, is_main, only_trainable=True)

    def write(folder: Path) -> None:
        from peft import get_peft_model
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        adapter = get_peft_model_state_dict(module, state_dict=trained)
        base = load_base()
        # the same peft config (the module names 'all-linear' resolved to) on the fresh base
        merged = get_peft_model(base, copy.deepcopy(module.peft_config["default"]))
        result = set_peft_model_state_dict(merged, adapter)
        if result.unexpected_keys:
            raise RuntimeError(f"adapter weights fit no module of the base: {result.unexpected_keys[:5]}")
        merged = merged.merge_and_unload()
        save_model(merged, folder)
        if settings.keep_adapter:
            module.save_pretrained(folder / ADAPTER_DIR, state_dict=trained, safe_serialization=True)

    return write
