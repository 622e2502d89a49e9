"""Opens a generation engine with the backend its options name. Apart from the interface
(`generation`) so that the backends, which import the interface, never import the factory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from xwin.sampling.generation import Engine, EngineOptions, Generation, GenerationParams, Messages


def create_engine(model_dir: str | Path, options: EngineOptions | None = None) -> Engine:
    """Load a model with the chosen backend (vLLM is imported only here, lazily)."""
    from xwin.core.hardware import resolve_dtype

    options = options or EngineOptions()
    options = options.model_copy(update={"dtype": resolve_dtype(options.dtype)})
    if options.backend == "vllm":
        from xwin.sampling.vllm_backend import VllmEngine

        return VllmEngine(Path(model_dir), options)
    from xwin.sampling.hf_backend import HfEngine

    return HfEngine(Path(model_dir), options)


@contextmanager
def open_engine(model_dir: str | Path, options: EngineOptions | None = None) -> Iterator[Engine]:
    """An engine for several `generate` calls (e.g. MT-bench turn 2 after turn 1); closed on
    exit. Scripts using the vLLM backend need an `if __name__ == "__main__":` guard: vLLM spawns
    its engine process, which re-imports the main module."""
    engine = create_engine(model_dir, options)
    try:
        yield engine
    finally:
        engine.close()


def generate(
    model_dir: str | Path,
    message_lists: Sequence[Messages],
    n: int = 1,
    params: GenerationParams | None = None,
    options: EngineOptions | None = None,
) -> list[list[Generation]]:
    """One-shot: load, generate `n` responses per context, close."""
    with open_engine(model_dir, options) as engine:
        return engine.generate(message_lists, n, params)
