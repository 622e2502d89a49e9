"""Opens a reward scorer with the backend asked for: `hf` (transformers in this process),
`vllm` (vLLM's pooling runner, tensor parallel), or `auto`, which picks vLLM where it is
installed and runs the folder's architecture and falls back to HF otherwise, saying why. Apart
from the interface (scoring.py) so that the backends never import the factory."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xwin.core.errors import UserError
from xwin.models.hf_scoring import HfRewardScorer
from xwin.models.scoring import RewardScorer

log = logging.getLogger(__name__)

RewardBackend = Literal["auto", "hf", "vllm"]
# The suffixes of a single-score head vLLM's pooling runner loads: a causal LM's
# ForSequenceClassification (vLLM converts the LM) and the reward-model classes it ships.
CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForRewardModel")


@dataclass(frozen=True)
class ScorerOptions:
    """How a reward model is loaded and batched (the score stage's and eval's settings)."""

    backend: RewardBackend = "hf"
    dtype: str = "float32"
    max_length: int = 2048  # tokens of one sequence, at most (vLLM's max_model_len)
    batch_size: int = 64  # hf: rows per forward pass, at most
    max_batch_tokens: int = 16384  # padded tokens per hf batch; vLLM's max_num_batched_tokens
    sort_by_length: bool = True  # hf
    attn_implementation: str = "sdpa"  # hf
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float | None = None  # vllm


def vllm_architectures() -> frozenset[str] | None:
    """The architectures vLLM runs, or None where vLLM is not installed (imports vLLM)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    from vllm import ModelRegistry

    return frozenset(ModelRegistry.get_supported_archs())


def vllm_unsupported_reason(architectures: Collection[str], supported: Collection[str] | None) -> str | None:
    """Why vLLM cannot score a folder of these architectures (None: it can). `supported` is
    vllm_architectures() (None: not installed). vLLM runs a causal LM's sequence classifier by
    converting the causal LM, so `LlamaForSequenceClassification` counts when `LlamaForCausalLM`
    is supported."""
    if supported is None:
        return "vllm is not installed here (on a cluster: the sampler image has it)"
    classifiers = [a for a in architectures if a.endswith(CLASSIFIER_SUFFIXES)]
    if not classifiers:
        return f"architectures {list(architectures)} hold no sequence classifier vLLM can pool"
    for arch in classifiers:
        if arch in supported or arch.replace("ForSequenceClassification", "ForCausalLM") in supported:
            return None
    return f"vLLM does not support {classifiers[0]}"


def folder_architectures(model_dir: str | Path) -> list[str]:
    config = Path(model_dir) / "config.json"
    if not config.exists():
        raise UserError(f"{model_dir}: not a reward model folder (no config.json)")
    return list(json.loads(config.read_text()).get("architectures") or [])


def choose_backend(requested: RewardBackend, model_dir: str | Path) -> tuple[str, str]:
    """(backend, why): `auto` is vLLM where it can score the folder, else HF with the reason;
    `vllm` where it cannot is a UserError naming the reason. Only vLLM-bound choices import it."""
    if requested == "hf":
        return "hf", "backend: hf"
    architectures = folder_architectures(model_dir)
    # a folder without a classifier (the rm stage's first format) is HF's whatever vLLM runs:
    # no need to import vLLM to say so
    has_classifier = any(a.endswith(CLASSIFIER_SUFFIXES) for a in architectures)
    reason = vllm_unsupported_reason(architectures, vllm_architectures() if has_classifier else frozenset())
    if reason is None:
        return "vllm", f"backend: {requested}"
    if requested == "vllm":
        raise UserError(f"reward model {model_dir}: backend vllm, but {reason}; use backend hf or auto")
    return "hf", f"backend auto fell back to hf: {reason}"


def create_reward_scorer(model_dir: str | Path, options: ScorerOptions) -> tuple[RewardScorer, str]:
    """The scorer and why its backend was chosen. Under `auto` a vLLM engine that fails to
    start (an attention head size vLLM's CPU kernels lack, too little memory) falls back to HF."""
    backend, why = choose_backend(options.backend, model_dir)
    if backend == "vllm":
        from xwin.models.vllm_scoring import VllmRewardScorer

        try:
            scorer: RewardScorer = VllmRewardScorer(
                model_dir, dtype=options.dtype, max_length=options.max_length,
                max_batch_tokens=options.max_batch_tokens, tensor_parallel_size=options.tensor_parallel_size,
                gpu_memory_utilization=options.gpu_memory_utilization)
            log.info("reward scoring with vllm (%s)", why)
            return scorer, why
        except Exception as e:  # noqa: BLE001 - auto's promise is a fallback, and it says why
            if options.backend == "vllm":
                raise
            why = f"backend auto fell back to hf: the vLLM engine did not start ({type(e).__name__}: {e})"
    log.info("reward scoring with hf (%s)", why)
    scorer = HfRewardScorer(model_dir, dtype=options.dtype, attn_implementation=options.attn_implementation,
                            batch_size=options.batch_size, max_batch_tokens=options.max_batch_tokens,
                            sort_by_length=options.sort_by_length)
    return scorer, why


@contextmanager
def open_reward_scorer(model_dir: str | Path, options: ScorerOptions) -> Iterator[tuple[RewardScorer, str]]:
    """create_reward_scorer, closed on exit. Scripts using vLLM need an `if __name__ ==
    "__main__":` guard: vLLM spawns its engine process, which re-imports the main module."""
    scorer, why = create_reward_scorer(model_dir, options)
    try:
        yield scorer, why
    finally:
        scorer.close()
