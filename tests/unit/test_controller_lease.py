"""Leases in the store with an injected clock: who holds, when a lease lapses, who may take it
over, what a holder that lost it is told, and how a run waits for a key another run produces."""

from __future__ import annotations

import threading
import time

import pytest

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.local import LocalStore
from xwin.controller.lease import (
    Holder,
    Lease,
    LeaseHeld,
    LeaseLost,
    kept,
    wait_for_key,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    return LocalStore(StoreConfig(root=tmp_path / "store"))


@pytest.fixture
def clock():
    return Clock()


def lease(store, clock, owner: str, ttl_s: float = 60.0) -> Lease:
    return Lease(store, "leases/runs/r1", owner, ttl_s, clock=clock)


def test_a_live_lease_is_refused_to_a_second_holder_naming_the_first(store, clock):
    first = lease(store, clock, "controller A")
    first.acquire()
    clock.now += 59.9
    with pytest.raises(LeaseHeld, match="controller A") as refused:
        lease(store, clock, "controller B").acquire()
    assert refused.value.holder.owner == "controller A"
    assert refused.value.holder.expires_at == 1_000_060.0


def test_renewing_pushes_the_expiry_out_by_one_ttl(store, clock):
    first = lease(store, clock, "controller A")
    first.acquire()
    clock.now += 50
    first.renew()
    clock.now += 50  # 100 s after acquiring, 50 after the renewal: still live
    with pytest.raises(LeaseHeld):
        lease(store, clock, "controller B").acquire()
    holder, _ = first.read()
    assert holder.expires_at == 1_000_110.0


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew(store, clock):
    first = lease(store, clock, "controller A")
    first.acquire()
    clock.now += 60  # lapsed exactly now: the holder stops writing by its own clock
    assert not first.valid()
    second = lease(store, clock, "controller B")
    second.acquire()
    assert first.read()[0].owner == "controller B"
    with pytest.raises(LeaseLost, match="taken over by controller B"):  # its version is gone
        first.renew()
    first.release()  # a taken-over lease is left alone
    assert first.read()[0].owner == "controller B" and not first.read()[0].released


def test_a_lapsed_lease_nobody_took_is_renewed_and_valid_again(store, clock):
    first = lease(store, clock, "controller A")
    first.acquire()
    clock.now += 90  # the store was unreachable for longer than the TTL
    assert not first.valid()
    first.renew()  # still at its version: nobody took it over
    assert first.valid() and first.holder.expires_at == clock.now + 60


def test_a_released_lease_is_free_at_once(store, clock):
    first = lease(store, clock, "controller A")
    first.acquire()
    first.release()
    assert first.read()[0].released
    lease(store, clock, "controller B").acquire()  # no need to wait out the TTL


def test_a_lease_record_that_does_not_validate_fences_nobody(store, clock):
    store.put_record("leases/runs/r1", b"{not json")
    taker = lease(store, clock, "controller B")
    taker.acquire()
    assert taker.read()[0].owner == "controller B"


def test_of_several_takers_of_an_expired_lease_one_wins(store, clock):
    lease(store, clock, "dead controller").acquire()
    clock.now += 61
    barrier = threading.Barrier(6)
    won, refused = [], []

    def take(n: int) -> None:
        barrier.wait()
        try:
            lease(store, clock, f"taker {n}").acquire()
            won.append(f"taker {n}")
        except LeaseHeld as e:
            refused.append(e.holder.owner)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert set(refused) == set(won)  # every loser is told who won
    assert lease(store, clock, "x").read()[0].owner == won[0]


def test_a_heartbeat_that_is_refused_reports_the_loss_once(store):
    mine = Lease(store, "leases/runs/r1", "controller A", ttl_s=30)
    mine.acquire()
    lost = []
    with kept(mine, interval_s=0.05, on_lost=lost.append) as beat:
        time.sleep(0.2)
        assert lost == []  # renewals go through
        renewed = mine.read()[0]
        assert renewed.renewed_at >= renewed.acquired_at
        _, version = mine.read()
        store.replace_record("leases/runs/r1", b'{"stolen": 1}', version=version)
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(lost) == 1 and "taken over" in lost[0]
    assert beat.lost == lost[0]


def test_waiting_for_a_key_backs_off_and_shows_the_holder(store, clock):
    producer = Lease(store, "leases/keys/sft/abc", "run A, stage sft", 60, clock=clock)
    producer.acquire()
    waiter = Lease(store, "leases/keys/sft/abc", "run B, stage sft", 60, clock=clock)
    seen: list[Holder] = []
    pauses: list[float] = []

    def pause(seconds: float) -> bool:
        pauses.append(seconds)
        if len(pauses) == 6:
            producer.release()  # run A committed its key
        return False

    assert wait_for_key(waiter, on_wait=seen.append, max_backoff_s=5, pause=pause)
    assert pauses == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert {h.owner for h in seen} == {"run A, stage sft"} and len(seen) == 6
    assert waiter.read()[0].owner == "run B, stage sft"


def test_waiting_for_a_key_stops_when_interrupted(store, clock):
    Lease(store, "leases/keys/sft/abc", "run A, stage sft", 60, clock=clock).acquire()
    waiter = Lease(store, "leases/keys/sft/abc", "run B, stage sft", 60, clock=clock)
    assert not wait_for_key(waiter, on_wait=lambda h: None, max_backoff_s=5,
                            pause=lambda s: True)
    assert waiter.holder is None


def test_a_key_reservation_that_lapses_is_taken_over_by_the_waiter(store, clock):
    Lease(store, "leases/keys/sft/abc", "run A, stage sft", 60, clock=clock).acquire()
    waiter = Lease(store, "leases/keys/sft/abc", "run B, stage sft", 60, clock=clock)

    def pause(seconds: float) -> bool:
        clock.now += seconds * 10  # run A died: nobody renews
        return False

    assert wait_for_key(waiter, on_wait=lambda h: None, max_backoff_s=30, pause=pause)
    assert waiter.read()[0].owner == "run B, stage sft"


def test_a_holder_on_this_host_whose_process_is_gone_fences_nobody(store, clock):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    killed = lease(store, clock, "controller killed with -9")
    killed.acquire()
    _, version = killed.read()
    record = killed.holder.model_copy(update={"pid": int(dead.stdout)})
    store.replace_record("leases/runs/r1", record.model_dump_json().encode(), version=version)
    lease(store, clock, "controller B").acquire()  # no need to wait out the TTL
    assert killed.read()[0].owner == "controller B"
    # the same record from a pod is not judged by pids (pods do not share them)
    assert record.model_copy(update={"pod": "xwin-controller-x"}).live(clock.now)


def test_renewing_no_more_often_than_the_ttl_is_a_config_error():
    from xwin.config import load_config
    from xwin.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"run.lease_renew_s \(10.0\) must be under "
                                          r"run.lease_ttl_s \(10.0\)"):
        load_config(None, ["run.lease_ttl_s=10", "run.lease_renew_s=10"])
    assert load_config(None, []).run.lease_ttl_s == 60.0
