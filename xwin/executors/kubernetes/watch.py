"""Watches that survive a flaky connection, and API calls that retry what is worth retrying.

The client's own `Watch.stream` retries a 410 once and gives up on a dropped connection; a
training run is watched for days, so this resumes every watch from the last resourceVersion
it saw (with tenacity's backoff), and relists when the server has compacted that version away
(410 Gone), the recovery the API conventions prescribe."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds for ordinary calls


class WatchExpired(Exception):
    """The server no longer has our resourceVersion (410 Gone): relist, then watch again."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the connection, not the request, went wrong."""
    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUS or exc.status == 0
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError,
                            http.client.HTTPException, WatchExpired))


def retrying(give_up_after_s: float) -> Retrying:
    return Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential(multiplier=0.2, max=10),
        stop=stop_after_delay(give_up_after_s),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


def call(fn: Callable[..., Any], *args, give_up_after_s: float = 120.0, **kwargs) -> Any:
    """One API call, retried on transient failures only (a 404 or 409 is an answer)."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    for attempt in retrying(give_up_after_s):
        with attempt:
            return fn(*args, **kwargs)


class ResumableWatch:
    """Events of the objects a list call selects, across any number of watch requests.

    The first request lists (its items arrive as ADDED events, so a Job that finished before
    we looked is seen); every later one resumes from the last resourceVersion."""

    def __init__(self, list_fn: Callable[..., Any], namespace: str, *, field_selector: str | None = None,
                 label_selector: str | None = None, timeout_s: int = 60,
                 give_up_after_s: float = 300.0):
        self.list_fn = list_fn
        self.namespace = namespace
        self.selectors = {k: v for k, v in (("field_selector", field_selector),
                                            ("label_selector", label_selector)) if v}
        self.timeout_s = timeout_s
        self.give_up_after_s = give_up_after_s
        self.resource_version: str | None = None
        self.relists = 0
        self.reconnects = 0

    def events(self) -> Iterator[dict[str, Any]]:
        """The events of one watch request (after a relist when needed); ends when the server
        closes it at timeout_s. Call again to go on: nothing is lost in between."""
        for attempt in retrying(self.give_up_after_s):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.reconnects += 1
                if self.resource_version is None:
                    yield from self._relist()
                yield from self._watch()

    def _relist(self) -> Iterator[dict[str, Any]]:
        listed = self.list_fn(self.namespace, _request_timeout=REQUEST_TIMEOUT, **self.selectors)
        self.relists += 1
        self.resource_version = listed.metadata.resource_version
        for item in listed.items:
            yield {"type": "ADDED", "object": item}

    def _watch(self) -> Iterator[dict[str, Any]]:
        w = watch.Watch()
        try:
            for event in w.stream(
                self.list_fn,
                self.namespace,
                resource_version=self.resource_version,
                timeout_seconds=self.timeout_s,
                allow_watch_bookmarks=True,
                # a silent, half-open connection must not hang us past the server's timeout
                _request_timeout=(REQUEST_TIMEOUT[0], self.timeout_s + 30),
                **self.selectors,
            ):
                if w.resource_version:
                    self.resource_version = w.resource_version
                if event["type"] != "BOOKMARK":
                    yield event
        except ApiException as e:
            if e.status == 410:
                log.info("watch expired at resourceVersion %s; relisting", self.resource_version)
                self.resource_version = None
                raise WatchExpired(str(e.reason)) from e
            raise
