"""Generating responses from a model folder: the `sample` stage (Xwin-Set) and the `eval` stage
(answers to judge) use the same engines.

    from xwin.sampling import EngineOptions, GenerationParams, open_engine

    with open_engine(model_dir, EngineOptions(backend="vllm", gpu_memory_utilization=0.3)) as engine:
        turn1 = engine.generate(contexts, n=1, params=GenerationParams(temperature=0))
        ...  # build turn-2 contexts from turn1, then engine.generate(...) again

`generate(model_dir, message_lists, n, params, options)` is the one-shot form. Nothing here
imports vLLM until a vLLM engine is created.
"""

from xwin.sampling.distinct import DistinctSamples, sample_distinct
from xwin.sampling.factory import create_engine, generate, open_engine
from xwin.sampling.generation import Engine, EngineOptions, Generation, GenerationParams

__all__ = [
    "DistinctSamples",
    "Engine",
    "EngineOptions",
    "Generation",
    "GenerationParams",
    "create_engine",
    "generate",
    "open_engine",
    "sample_distinct",
]
