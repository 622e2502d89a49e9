"""Answers of the models under evaluation, made through the sample stage's engine (vLLM or
batched HF generate) and cached like judge replies: a rerun loads no model at all.

MT-bench is answered turn by turn: turn 2's context holds the model's own turn-1 answer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from typing_extensions import Self

from xwin.judge.cache import ResponseCache, request_key
from xwin.judge.session import folder_fingerprint
from xwin.sampling.factory import create_engine
from xwin.sampling.generation import Engine, EngineOptions, GenerationParams

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class CachedAnswerer:
    """One model's answers: from the cache, else from an engine loaded on first need."""

    def __init__(self, model_dir: Path, options: EngineOptions, params: GenerationParams,
                 cache: ResponseCache):
        self.model_dir = Path(model_dir)
        self.options = options
        self.params = params
        self.cache = cache
        self._engine: Engine | None = None
        self.identity = folder_fingerprint(self.model_dir)  # contents, not the folder's name
        self._key_params: dict[str, Any] = {"engine": options.model_dump(), **params.model_dump()}
        self.generated = 0
        self.cache_hits = 0

    def _get_engine(self) -> Engine:
        if self._engine is None:
            log.info("loading %s for answers (%s)", self.model_dir, self.options.backend)
            self._engine = create_engine(self.model_dir, self.options)
        return self._engine

    def answer(self, contexts: list[Messages], n: int = 1) -> list[list[str]]:
        """n answers per context (n > 1 needs a temperature above 0 to differ)."""
        params = {**self._key_params, "n": n}
        keys = [request_key(self.identity, c, params) for c in contexts]
        results: dict[str, list[str]] = {}
        for key in keys:
            if key not in results and (hit := self.cache.get(key)) is not None:
                results[key] = hit["texts"]
        todo: dict[str, Messages] = {}
        for key, context in zip(keys, contexts):
            if key not in results:
                todo.setdefault(key, context)
        self.cache_hits += sum(1 for key in keys if key not in todo)
        if todo:
            generations = self._get_engine().generate(list(todo.values()), n, self.params)
            for key, gens in zip(todo, generations):
                texts = [g.text.strip() for g in gens]
                self.cache.put(key, {"texts": texts})
                results[key] = texts
            self.generated += len(todo)
        return [results[k] for k in keys]

    def close(self) -> None:
        """Free the model (the next model under evaluation needs the memory)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def answer_multi_turn(answerer: CachedAnswerer, questions: list[list[str]]) -> list[list[str]]:
    """Answers to every turn of every question; each turn sees the model's earlier answers."""
    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(max(len(q) for q in questions)):
        live = [i for i, q in enumerate(questions) if len(q) > turn]
        contexts = []
        for i in live:
            context: Messages = []
            for question, answer in zip(questions[i][:turn], answers[i]):
                context += [{"role": "user", "content": question},
                            {"role": "assistant", "content": answer}]
            contexts.append(context + [{"role": "user", "content": questions[i][turn]}])
        for i, texts in zip(live, answerer.answer(contexts)):
            answers[i].append(texts[0])
    return answers
