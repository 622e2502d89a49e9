"""Leases in the artifact store: which controller may write a run, and which run is producing a
content key right now. The store is all two controller pods on a cluster share, so this is where
they are fenced: a local flock (`pipeline.run_lock`) only fences processes on one machine.

A lease is one small record, `leases/runs/<run_id>` or `leases/keys/<content key>`, naming its
holder (what, host, pid, pod, a random token) and when it expires. Every write is conditional
(ArtifactStore.create_record / replace_record: S3 `If-None-Match: *` / `If-Match: <ETag>`):

- acquire: create the record if absent; if present and expired (or released), replace exactly
  the version read, so of two controllers taking over at once only one wins;
- renew: replace the version this holder last wrote; refused means someone took it over, and
  the holder must stop writing at once (`Heartbeat` calls `on_lost`);
- release: replace it with a released copy (still conditional), so the next taker need not wait
  out the TTL. Records are never deleted: a conditional delete is not in every S3 API.

A holder on this machine whose process is gone is dead at once (its pid is checked), so a
killed controller's run resumes without waiting out the TTL.

Expiry compares wall clocks (`time.time`) across machines: their skew must stay well under the
TTL (NTP keeps it to milliseconds). A holder whose renewals fail because the store cannot be
reached stops writing once its own copy has expired (`valid()`), and keeps trying: a renewal
that then goes through proves nobody took over (the version is still its own), one that is
refused means someone did. So a store outage longer than the TTL pauses a run; it does not
end it, and two controllers never both write.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xwin.artifacts.store import ArtifactError, RecordConflict
from xwin.core.clock import utc_now
from xwin.core.errors import UserError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_ACQUIRE_TRIES = 3  # a lease that changes between our read and our write: read it again


class RunBusy(UserError):
    """Another controller holds this run (its lease is live), or this one lost it."""


def run_lease_key(run_id: str) -> str:
    return f"leases/runs/{run_id}"


def key_lease_key(content_key: str) -> str:
    return f"leases/keys/{content_key}"


class Holder(BaseModel):
    """Who holds a lease, as its record says. Unknown fields are ignored, so a newer xwin's
    lease still reads (and still fences) here."""

    model_config = ConfigDict(extra="ignore")

    owner: str = Field(description="what holds it: `controller of run R`, `run R, stage S`")
    token: str = Field(description="random per acquisition: tells two holders on one host apart")
    host: str
    pid: int
    pod: str | None = Field(None, description="the Kubernetes pod, when the holder runs in one")
    acquired_at: str
    renewed_at: str
    expires_at: float = Field(description="wall-clock seconds (time.time) it lapses at")
    ttl_s: float
    released: bool = False

    def live(self, now: float) -> bool:
        """Unreleased, unexpired, and not a process known to be dead: a holder on this host
        (outside a pod) whose pid is gone was killed, so `kill -9` then `xwin resume` need not
        wait out the TTL."""
        return not self.released and now < self.expires_at and not self._died_here()

    def _died_here(self) -> bool:
        if self.pod is not None or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self) -> str:
        where = f"pod {self.pod}" if self.pod else f"host {self.host}"
        return f"{self.owner} ({where}, pid {self.pid}, renewed {self.renewed_at})"


class LeaseHeld(ArtifactError):
    """The lease is held, live, by someone else."""

    def __init__(self, key: str, holder: Holder):
        super().__init__(f"{key} is held by {holder.describe()}")
        self.key = key
        self.holder = holder


class LeaseLost(ArtifactError):
    """This holder's lease was taken over: its renewal was refused."""


def pod_name() -> str | None:
    """The pod's name inside Kubernetes (the downward API's POD_NAME, else the hostname, which
    Kubernetes sets to the pod's name); None elsewhere."""
    if name := os.environ.get("POD_NAME"):
        return name
    return socket.gethostname() if os.environ.get("KUBERNETES_SERVICE_HOST") else None


def read_lease(store, key: str) -> tuple[Holder | None, str] | None:
    """The lease record's holder and version, None if there is none; (None, version) for a
    record that does not validate (damaged, or not a lease): it fences nobody."""
    found = store.get_record_versioned(key)
    if found is None:
        return None
    try:
        return Holder.model_validate_json(found.data), found.version
    except ValidationError as e:
        log.warning("lease %s does not validate (%s); treating it as expired", key,
                    str(e).splitlines()[0])
        return None, found.version


class Lease:
    """One lease record and this process's claim on it. `clock` is injectable for tests."""

    def __init__(self, store, key: str, owner: str, ttl_s: float, clock: Clock = time.time):
        self.store = store
        self.key = key
        self.owner = owner
        self.ttl_s = ttl_s
        self.clock = clock
        self.holder: Holder | None = None  # ours, once acquired
        self.version: str | None = None  # of the record we last wrote

    def _new_holder(self) -> Holder:
        now = utc_now()
        return Holder(owner=self.owner, token=secrets.token_hex(8), host=socket.gethostname(),
                      pid=os.getpid(), pod=pod_name(), acquired_at=now, renewed_at=now,
                      expires_at=self.clock() + self.ttl_s, ttl_s=self.ttl_s)

    def read(self) -> tuple[Holder | None, str] | None:
        return read_lease(self.store, self.key)

    def acquire(self) -> Holder:
        """Create the lease, or take over an expired or released one; LeaseHeld if it is live."""
        mine = self._new_holder()
        data = mine.model_dump_json().encode()
        for _ in range(_ACQUIRE_TRIES):
            try:
                self.version = self.store.create_record(self.key, data)
                break
            except RecordConflict:
                pass
            current = self.read()
            if current is None:  # vanished between the two calls: create again
                continue
            holder, version = current
            if holder is not None and holder.live(self.clock()):
                raise LeaseHeld(self.key, holder)
            try:
                self.version = self.store.replace_record(self.key, data, version=version)
            except RecordConflict:  # another taker won; the next read names it
                continue
            if holder is not None:
                log.info("took over %s from %s (expired)", self.key, holder.describe())
            break
        else:
            current = self.read()
            if current is not None and current[0] is not None:
                raise LeaseHeld(self.key, current[0])
            raise ArtifactError(f"lease {self.key} keeps changing while it is acquired")
        self.holder = mine
        return mine

    def renew(self) -> None:
        """Push the expiry out by one TTL; LeaseLost if someone else's write came first. Tried
        even once lapsed: if the record is still at our version, nobody took it over."""
        if self.holder is None or self.version is None:
            raise LeaseLost(f"{self.key}: not held")
        renewed = self.holder.model_copy(update={"renewed_at": utc_now(),
                                                 "expires_at": self.clock() + self.ttl_s})
        try:
            self.version = self.store.replace_record(self.key, renewed.model_dump_json().encode(),
                                                     version=self.version)
        except RecordConflict as e:
            current = self.read()
            taker = current[0].describe() if current and current[0] else "someone else"
            raise LeaseLost(f"{self.key} was taken over by {taker}") from e
        self.holder = renewed

    def valid(self) -> bool:
        """Whether this process may still act as the holder, by its own clock."""
        return self.holder is not None and self.clock() < self.holder.expires_at

    def release(self) -> None:
        """Mark the lease released (conditionally: a lease taken over is left alone)."""
        if self.holder is None or self.version is None:
            return
        released = self.holder.model_copy(update={"released": True, "renewed_at": utc_now(),
                                                  "expires_at": self.clock()})
        try:
            self.store.replace_record(self.key, released.model_dump_json().encode(),
                                      version=self.version)
        except RecordConflict:
            log.info("%s was taken over before it was released", self.key)
        except ArtifactError as e:  # it lapses by itself after the TTL
            log.warning("could not release %s (%s); it expires in %.0f s", self.key, e,
                        self.holder.expires_at - self.clock())
        self.holder = self.version = None


class Heartbeat:
    """A daemon thread renewing a lease every `interval_s`. A refused renewal calls
    `on_lost(reason)` once and stops; a store that cannot be reached is retried (the holder
    stops writing while its lease has lapsed: see Lease.valid)."""

    def __init__(self, lease: Lease, interval_s: float, on_lost: Callable[[str], None]):
        self.lease = lease
        self.interval_s = interval_s
        self.on_lost = on_lost
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {lease.key}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.lease.renew()
            except LeaseLost as e:
                self.lost = str(e)
            except Exception as e:  # noqa: BLE001 - the store may come back
                lapsed = "" if self.lease.valid() else "; lapsed: nothing is written until then"
                log.warning("could not renew %s (%s); retrying%s", self.lease.key, e, lapsed)
            if self.lost:
                log.error("lost lease %s: %s", self.lease.key, self.lost)
                self.on_lost(self.lost)
                return


@contextmanager
def kept(lease: Lease, interval_s: float, on_lost: Callable[[str], None]) -> Iterator[Heartbeat]:
    """An acquired lease renewed for the block, released after it."""
    beat = Heartbeat(lease, interval_s, on_lost)
    beat.start()
    try:
        yield beat
    finally:
        beat.stop()
        lease.release()


def _plain_sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def wait_for_key(
    lease: Lease,
    *,
    on_wait: Callable[[Holder], None],
    max_backoff_s: float,
    pause: Callable[[float], bool] = _plain_sleep,
) -> bool:
    """Acquire a content key's reservation, waiting (0.5 s, doubling up to max_backoff_s)
    while another run holds it; `on_wait(holder)` at each look. `pause(seconds)` sleeps and
    says whether to give up (an interrupt): then False."""
    backoff = min(0.5, max_backoff_s)
    while True:
        try:
            lease.acquire()
            return True
        except LeaseHeld as e:
            on_wait(e.holder)
        if pause(backoff):
            return False
        backoff = min(backoff * 2, max_backoff_s)
