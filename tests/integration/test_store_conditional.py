"""Conditional record writes, against the local store and moto's S3 over HTTP: create only if
absent (S3 If-None-Match: *), replace only the version read (If-Match: <ETag>), and of several
writers at once exactly one wins."""

from __future__ import annotations

import threading

import pytest

from xwin.artifacts.local import LocalStore
from xwin.artifacts.s3 import S3Store
from xwin.artifacts.store import RecordConflict


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return request.getfixturevalue("local_store")
    request.getfixturevalue("moto_atomic_puts")
    return S3Store(request.getfixturevalue("s3_store_config"), backoff_s=0.01)


def test_create_writes_once_and_a_second_create_is_refused(store):
    version = store.create_record("leases/runs/r1", b"first")
    assert store.get_record_versioned("leases/runs/r1") == (b"first", version)
    with pytest.raises(RecordConflict):
        store.create_record("leases/runs/r1", b"second")
    assert store.get_record("leases/runs/r1") == b"first"


def test_replace_needs_the_version_it_read(store):
    v1 = store.create_record("leases/keys/sft/abc", b"one")
    v2 = store.replace_record("leases/keys/sft/abc", b"two", version=v1)
    assert v2 != v1
    assert store.get_record_versioned("leases/keys/sft/abc") == (b"two", v2)
    with pytest.raises(RecordConflict):  # v1 is stale now
        store.replace_record("leases/keys/sft/abc", b"three", version=v1)
    assert store.get_record("leases/keys/sft/abc") == b"two"
    with pytest.raises(RecordConflict):  # nothing to replace
        store.replace_record("leases/keys/sft/none", b"x", version=v2)
    assert store.get_record("leases/keys/sft/none") is None


def test_records_under_a_prefix_are_listed(store):
    for run_id in ("a-1", "a-2", "b-1"):
        store.create_record(f"runs-index/{run_id}", b"{}")
    store.put_record("runs/a-1", b"{}")
    assert store.list_records("runs-index/") == ["runs-index/a-1", "runs-index/a-2",
                                                 "runs-index/b-1"]
    assert store.list_records("runs-index/a") == ["runs-index/a-1", "runs-index/a-2"]
    assert store.list_records("nothing/") == []


@pytest.mark.parametrize("write", ["create", "replace"])
def test_of_eight_writers_at_once_exactly_one_wins(store, write):
    key = "leases/runs/contended"
    base = store.create_record(key, b"base") if write == "replace" else None
    barrier = threading.Barrier(8)
    wins, conflicts = [], []

    def writer(n: int) -> None:
        data = f"writer {n}".encode()
        barrier.wait()
        try:
            if write == "create":
                store.create_record(key, data)
            else:
                store.replace_record(key, data, version=base)
            wins.append(data)
        except RecordConflict:
            conflicts.append(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == 7
    assert store.get_record(key) == wins[0]


def test_a_create_whose_answer_was_lost_is_still_a_win(s3_fault_proxy, s3_store_config,
                                                        moto_atomic_puts):
    """The PUT lands, the connection drops before its 200, the retry gets 412: the record
    holds this writer's own bytes, so the create succeeded."""
    config = s3_store_config.model_copy(update={"endpoint_url": s3_fault_proxy.endpoint_url})
    store = S3Store(config, backoff_s=0.01)
    s3_fault_proxy.fail("PUT", ".records/leases/runs/r1", action="lose-answer")
    version = store.create_record("leases/runs/r1", b"mine")
    assert store.get_record_versioned("leases/runs/r1") == (b"mine", version)
    puts = [r for r in s3_fault_proxy.requests if r[0] == "PUT" and ".records/" in r[1]]
    assert len(puts) == 2  # the lost one and the retry
    with pytest.raises(RecordConflict):  # another writer's bytes are still refused
        store.create_record("leases/runs/r1", b"theirs")


def test_the_local_version_follows_the_bytes(local_store: LocalStore):
    v1 = local_store.create_record("x/y", b"a")
    local_store.put_record("x/y", b"b")  # an unconditional write changes the version too
    with pytest.raises(RecordConflict):
        local_store.replace_record("x/y", b"c", version=v1)
