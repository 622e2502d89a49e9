"""Helpers shared by the sample/score/select stage tests: write a stage spec for a local store
and read back what a stage committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store

PROMPTS = [
    {"id": "capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {
        "id": "multi-turn",
        "messages": [
            {"role": "user", "content": "Give me a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "And a vegetable?"},
        ],
    },
    {
        "id": "with-system",
        "messages": [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
    },
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_spec(
    root: Path,
    stage: str,
    inputs: dict[str, str],
    config: dict[str, Any],
    *,
    output: str | None = None,
    shards: int = 1,
    name: str | None = None,
) -> Path:
    """A stage spec using a local store under `root/store` and a workdir under `root/work`."""
    spec = {
        "stage": stage,
        "run_id": "test",
        "store": {"kind": "local", "root": str(root / "store")},
        "inputs": inputs,
        "output": output or f"runs/test/{stage}",
        "config": config,
        "shards": shards,
        "workdir": str(root / "work"),
    }
    path = root / (name or f"{stage}.yaml")
    path.write_text(yaml.safe_dump(spec))
    return path


def fetch(root: Path, key: str) -> Path:
    """The local folder of a committed artifact in the test's store."""
    store = open_store(StoreConfig(kind="local", root=root / "store"))
    assert store.exists(key), f"{key} was not committed"
    return store.fetch(key)


def manifest_metrics(root: Path, key: str) -> dict:
    store = open_store(StoreConfig(kind="local", root=root / "store"))
    return store.manifest(key).metadata["metrics"]
