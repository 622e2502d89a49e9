"""A client for any OpenAI-compatible chat endpoint (vLLM, OpenAI, a proxy), built for judging:
bounded concurrency, retries with backoff on 429/5xx/timeouts, and a persistent cache so that a
rerun asks nothing twice. An API key (from the environment only) goes to https:// endpoints or
to this machine; plain http elsewhere needs judge.allow_insecure_http. The endpoint may be given
lazily (a function that starts a server), so a fully cached rerun never starts one."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tqdm.auto import tqdm

from xwin.core.errors import ConfigError, UserError
from xwin.judge.cache import ResponseCache, request_key

log = logging.getLogger(__name__)
# httpx logs every request at INFO; thousands of judge calls would drown the stage's own log.
logging.getLogger("httpx").setLevel(logging.WARNING)

Messages = list[dict[str, str]]


class JudgeUnavailable(RuntimeError):
    """The endpoint kept failing after every retry: transient for the stage (exit 1, retried)."""


class _RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: float | None, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.retry_after = retry_after


@dataclass
class Completion:
    """One judge reply. text is None when the endpoint refused this one request (e.g. HTTP 400
    for a prompt longer than its context); such failures are counted, never cached."""

    text: str | None
    cached: bool = False
    error: str | None = None


@dataclass
class ClientStats:
    requests: int = 0  # HTTP requests sent, retries included
    completions: int = 0  # new replies received (and cached)
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0  # requests the endpoint refused for good (4xx)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def api_key_from_env(env_name: str | None) -> str | None:
    """The key lives only in the environment (a Kubernetes Secret in a cluster)."""
    return os.environ.get(env_name) if env_name else None


def is_loopback_host(host: str | None) -> bool:
    """Whether `host` names this machine (a loopback address or localhost) and traffic to it
    never leaves the machine; a DNS name other than localhost may resolve anywhere."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_transport(url: str, *, has_key: bool, allow_insecure_http: bool) -> None:
    """Refuse to send an API key in clear text across the network: with a key, the endpoint
    must be https://, or http:// to a loopback address, unless the config allows plain http."""
    if not has_key or allow_insecure_http:
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"judge.base_url {parts.scheme}://{parts.netloc}: the API key would cross the network "
            "unencrypted (plain http to a host other than this machine); use https://, or set "
            "judge.allow_insecure_http: true to allow it"
        )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _RetryableStatus))


class JudgeClient:
    def __init__(
        self,
        base_url: str | Callable[[], str],
        model: str,
        *,
        identity: str | None = None,
        cache: ResponseCache | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_attempts: int = 6,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 300.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        allow_insecure_http: bool = False,
    ):
        """identity names the judge in cache keys (model name plus weights fingerprint for a
        local server, so two different models both served as "judge" never share answers).
        An API key goes only to https:// or loopback endpoints unless allow_insecure_http."""
        self._allow_insecure_http = allow_insecure_http
        if isinstance(base_url, str):  # a lazy endpoint is checked once it is known
            check_key_transport(base_url, has_key=bool(api_key), allow_insecure_http=allow_insecure_http)
        self._base_url = base_url
        self.model = model
        self.identity = identity or model
        self.cache = cache
        self._api_key = api_key
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        self.stats = ClientStats()
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial_s, jitter=backoff_initial_s, max=backoff_max_s)
        self._backoff_max_s = backoff_max_s
        self._http: httpx.Client | None = None
        self._connect_lock = threading.Lock()
        self.connect_s = 0.0  # time spent reaching the endpoint (starting a local server)

    # -- the endpoint ------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        with self._connect_lock:
            if self._http is None:
                started = time.monotonic()
                url = self._base_url() if callable(self._base_url) else self._base_url
                self.connect_s = time.monotonic() - started
                check_key_transport(url, has_key=bool(self._api_key),
                                    allow_insecure_http=self._allow_insecure_http)
                headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
                self._http = httpx.Client(
                    base_url=url.rstrip("/"),
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout_s, connect=min(30.0, self.timeout_s)),
                    limits=httpx.Limits(max_connections=self.max_concurrency),
                )
            return self._http

    @property
    def connected(self) -> bool:
        return self._http is not None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # -- one request ---------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self._backoff_max_s)
        return self._backoff(state)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.stats.add(retries=1)
        exc = state.outcome.exception() if state.outcome else None
        log.warning("judge request failed (attempt %d): %s; retrying", state.attempt_number, exc)

    def _post(self, body: dict[str, Any]) -> Completion:
        self.stats.add(requests=1)
        response = self._client().post("/chat/completions", json=body)
        status = response.status_code
        if status == 429 or status >= 500:
            raise _RetryableStatus(status, _retry_after(response), response.text)
        if status in (401, 403):
            raise UserError(
                f"judge endpoint refused the API key (HTTP {status}); check the variable the "
                "config's judge.api_key_env names"
            )
        if status == 404:
            raise UserError(f"judge endpoint: HTTP 404 for model {self.model!r}: {response.text[:300]}")
        if status >= 400:
            self.stats.add(errors=1)
            return Completion(text=None, error=f"HTTP {status}: {response.text[:300]}")
        try:
            choice = response.json()["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _RetryableStatus(status, None, f"malformed reply ({e}): {response.text}") from e
        return Completion(text=text)

    def complete(self, messages: Messages, extra: dict[str, Any] | None = None) -> Completion:
        """One chat completion, from the cache when this exact request was made before."""
        return self.complete_many([messages], extra)[0]

    def _complete_new(self, messages: Messages, params: dict[str, Any]) -> Completion:
        body = {"model": self.model, "messages": messages, **params}
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            result = retrying(self._post, body)
        except (httpx.TransportError, _RetryableStatus) as e:
            raise JudgeUnavailable(
                f"judge endpoint failed {self.max_attempts} times in a row; last error: {e}"
            ) from e
        if result.text is not None:
            self.stats.add(completions=1)
            if self.cache is not None:
                key = request_key(self.identity, messages, params)
                self.cache.put(key, {"text": result.text, "model": self.model})
        return result

    def complete_many(
        self, requests: list[Messages], extra: dict[str, Any] | None = None, desc: str = "judging"
    ) -> list[Completion]:
        """Many completions, at most max_concurrency in flight; results in request order.
        Cached ones are answered first, so the endpoint is touched only if something is new."""
        params = {**self.params, **(extra or {})}
        keys = [request_key(self.identity, messages, params) for messages in requests]
        results: dict[str, Completion] = {}
        todo: dict[str, Messages] = {}  # identical requests (e.g. a model against itself) once
        for key, messages in zip(keys, requests):
            if key in results or key in todo:
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[key] = Completion(text=hit["text"], cached=True)
            else:
                todo[key] = messages
        self.stats.add(cache_hits=sum(1 for key in keys if key not in todo))
        if todo:
            self._client()  # start the endpoint once, before the workers race for it
            with ThreadPoolExecutor(self.max_concurrency) as pool, tqdm(
                total=len(todo), desc=desc, unit="req", disable=len(todo) == 1
            ) as bar:
                futures = {pool.submit(self._complete_new, m, params): key for key, m in todo.items()}
                try:
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update(1)
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
        return [results[key] for key in keys]
