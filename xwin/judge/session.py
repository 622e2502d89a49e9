"""From a JudgeConfig to a ready JudgeClient: an external endpoint as configured, or a local
vLLM server for the judge model that starts on the first request the cache cannot answer and
stops when the stage ends."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from xwin.core.errors import ConfigError
from xwin.judge.cache import ResponseCache
from xwin.judge.client import JudgeClient, api_key_from_env
from xwin.judge.config import JudgeConfig
from xwin.judge.server import VllmServer
from xwin.judge.verdicts import verdict_constraint

log = logging.getLogger(__name__)


FULL_HASH_LIMIT = 1 << 30  # files up to 1 GiB are hashed whole
SAMPLED_CHUNKS, CHUNK = 1024, 4096  # larger ones: 4 MiB read at evenly spread offsets


def folder_fingerprint(path: str | Path) -> str:
    """A short id of a model folder's contents, part of every cache key, so that new weights
    never reuse old answers. File names and sizes alone would not do: an RS model has the same
    shapes as its SFT model. Small files are hashed whole; for larger ones (7B+ shards) a
    thousand spread-out chunks are read, since finetuning changes nearly every weight."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}:{size}\n".encode())
        with open(f, "rb") as stream:
            if size <= FULL_HASH_LIMIT:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
            else:
                for i in range(SAMPLED_CHUNKS):
                    stream.seek(i * (size - CHUNK) // (SAMPLED_CHUNKS - 1))
                    h.update(stream.read(CHUNK))
    return h.hexdigest()[:16]


def request_extra(cfg: JudgeConfig, kind: str) -> dict[str, Any] | None:
    """Extra request fields for a verdict kind ("single" or "pairwise")."""
    return verdict_constraint(kind, cfg.max_tokens) if cfg.constrain_verdict else None


@contextmanager
def open_judge(
    cfg: JudgeConfig, *, workdir: Path, model_path: Path | None = None, name: str | None = None
) -> Iterator[JudgeClient]:
    """model_path/name: the judge model for a local server (the stage's `judge` input)."""
    cache = ResponseCache(cfg.cache_path or Path(workdir) / "judge-cache.sqlite")
    with ExitStack() as stack:
        stack.callback(cache.close)
        if cfg.base_url:
            if not cfg.model:
                raise ConfigError("judge.model: required with judge.base_url (the endpoint's model name)")
            base_url: Any = cfg.base_url
            model = identity = cfg.model
            api_key = api_key_from_env(cfg.api_key_env)
            if cfg.api_key_env and api_key is None:
                log.warning("judge: %s is not set; calling %s without an API key",
                            cfg.api_key_env, cfg.base_url)
        else:
            path = model_path or (Path(cfg.model_path) if cfg.model_path else None)
            if path is None:
                raise ConfigError("judge: set judge.base_url (an endpoint), or give the judge "
                                  "model as the stage input `judge` or judge.model_path")
            if not (Path(path) / "config.json").exists():
                raise ConfigError(f"judge model {path}: not an HF model folder (no config.json)")
            model = cfg.model or name or Path(path).name
            identity = f"local@{folder_fingerprint(path)}"  # the weights, not the served name
            server = VllmServer(Path(path), model, cfg.server, Path(workdir) / "judge-server.log")
            stack.callback(server.stop)
            base_url = server.start  # called on the first cache miss only
            api_key = None  # bound to 127.0.0.1, no key needed
        client = JudgeClient(
            base_url, model, identity=identity, cache=cache, api_key=api_key,
            max_concurrency=cfg.max_concurrency, max_attempts=cfg.max_attempts,
            backoff_initial_s=cfg.backoff_initial_s, backoff_max_s=cfg.backoff_max_s,
            timeout_s=cfg.timeout_s, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
            allow_insecure_http=cfg.allow_insecure_http,
        )
        stack.callback(client.close)
        yield client
