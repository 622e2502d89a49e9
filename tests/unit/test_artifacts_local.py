"""The local artifact store: commits become visible only whole, re-commits replace atomically,
crashes mid-commit leave nothing a reader could trust, and damaged files are caught."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.artifacts.local import STALE_STAGING_S, LocalStore
from xwin.artifacts.store import ArtifactCorrupt, ArtifactError, ArtifactNotFound, InvalidKey
from xwin.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_folder(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))


@pytest.fixture
def model_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"hidden_size": 64}',
        "tokenizer/tokenizer.json": b"{}" * 100,
        "model.safetensors": os.urandom(300_000),
        "empty.txt": b"",
    }


def test_commit_records_size_and_sha256_of_every_file_and_fetch_returns_them(
    store, tmp_path, model_files
):
    src = make_folder(tmp_path / "out", model_files)
    manifest = store.commit(
        "sft/abc", src, producer="sft", config_digest="d1", metadata={"metrics": {"loss": 1.5}}
    )
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == {
        rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in model_files.items()
    }
    assert manifest.total_bytes == sum(len(d) for d in model_files.values())
    assert (manifest.producer, manifest.config_digest) == ("sft", "d1")
    assert manifest.metadata == {"metrics": {"loss": 1.5}}
    assert datetime.fromisoformat(manifest.created_at).tzinfo is not None
    assert store.manifest("sft/abc") == manifest
    assert store.exists("sft/abc")

    in_place = store.fetch("sft/abc")
    assert read_folder(in_place) == model_files
    assert manifest.commit_id in str(in_place)  # the committed folder itself, no copy

    copy = store.fetch("sft/abc", tmp_path / "copy")
    assert copy == tmp_path / "copy"
    assert read_folder(copy) == model_files
    assert os.access(copy / "config.json", os.W_OK)


def test_committed_files_are_read_only_and_later_changes_to_the_source_do_not_leak(
    store, tmp_path, model_files
):
    src = make_folder(tmp_path / "out", model_files)
    store.commit("k", src, producer="test")
    (src / "config.json").write_bytes(b"changed after commit")
    folder = store.fetch("k")
    assert (folder / "config.json").read_bytes() == model_files["config.json"]
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o444


def test_commit_follows_symlinks_like_a_hugging_face_snapshot(store, tmp_path):
    blobs = make_folder(tmp_path / "blobs", {"abc123": b"weights"})
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "model.safetensors").symlink_to(blobs / "abc123")
    (snapshot / "loop").symlink_to(snapshot)  # walked once, not forever
    store.commit("m", snapshot, producer="import")
    assert read_folder(store.fetch("m")) == {"model.safetensors": b"weights"}


def test_a_broken_symlink_is_named_before_anything_is_copied(store, tmp_path):
    src = make_folder(tmp_path / "out", {"a": b"x"})
    (src / "b").symlink_to(tmp_path / "gone")
    with pytest.raises(ArtifactError, match=r"out/b: not a regular file \(a broken symlink\?\)"):
        store.commit("k", src, producer="t")
    assert not store.exists("k")


def test_list_returns_only_committed_keys_under_the_prefix_sorted(store, tmp_path):
    src = make_folder(tmp_path / "out", {"f": b"x"})
    for key in ["sft/b", "sft/a", "sample/k/part-00001-of-00002", "sample/k/part-00000-of-00002"]:
        store.commit(key, src, producer="test")
    store.commit("sft", src, producer="test")  # a key that is also a prefix of others
    store.put_record("runs/r1.json", b"{}")
    (store.root / "rm" / "x" / ".commits" / "orphan").mkdir(parents=True)  # never published

    assert store.list() == [
        "sample/k/part-00000-of-00002",
        "sample/k/part-00001-of-00002",
        "sft",
        "sft/a",
        "sft/b",
    ]
    assert store.list("sft/") == ["sft/a", "sft/b"]
    assert store.list("sft") == ["sft", "sft/a", "sft/b"]
    assert store.list("sample/k/") == [
        "sample/k/part-00000-of-00002",
        "sample/k/part-00001-of-00002",
    ]
    assert store.list("rm") == []
    assert store.list("nothing/") == []


def test_recommit_gives_a_new_commit_and_collects_the_old_files(store, tmp_path):
    first = store.commit(
        "k", make_folder(tmp_path / "v1", {"a": b"one", "old": b"x"}), producer="t"
    )
    old_folder = store.fetch("k")
    store.release(old_folder)  # done reading it (a held folder is kept: see the reader tests)
    second = store.commit("k", make_folder(tmp_path / "v2", {"a": b"two"}), producer="t")

    assert second.commit_id != first.commit_id
    assert store.manifest("k").commit_id == second.commit_id
    assert read_folder(store.fetch("k")) == {"a": b"two"}
    assert not old_folder.exists()
    assert [d.name for d in (store.root / "k" / ".commits").iterdir()] == [second.commit_id]
    assert [p.name for p in (store.root / ".staging").iterdir()] == []  # trash emptied


_READ_SLOWLY = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.local import LocalStore

    root, key, ready, go = sys.argv[1:5]
    folder = LocalStore(StoreConfig(kind="local", root=root)).fetch(key)
    handle = open(folder / "model.bin", "rb")  # a reader mid-file when the key is re-committed
    head = handle.read(10)
    Path(ready).write_text(str(folder))
    while not Path(go).exists():
        time.sleep(0.02)
    # the rest of the open file, and a file opened by path only now, are the old commit's
    print(json.dumps([len(head + handle.read()), (folder / "config.json").read_text(),
                      sorted(p.name for p in folder.iterdir())]))
    """
)


def test_a_recommit_never_moves_or_deletes_the_folder_a_reader_process_holds(store, tmp_path):
    old_model = os.urandom(200_000)
    store.commit("k", make_folder(tmp_path / "v1", {"model.bin": old_model, "config.json": b"v1"}),
                 producer="t")
    ready, go = tmp_path / "ready", tmp_path / "go"
    reader = subprocess.Popen([sys.executable, "-c", _READ_SLOWLY, str(store.root), "k", str(ready), str(go)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), reader.communicate()
    held = Path(ready.read_text())

    store.commit("k", make_folder(tmp_path / "v2", {"model.bin": b"new", "config.json": b"v2"}),
                 producer="t")
    store.commit("k", make_folder(tmp_path / "v3", {"model.bin": b"newer", "config.json": b"v3"}),
                 producer="t")
    newest = store.fetch("k")
    assert read_folder(newest) == {"model.bin": b"newer", "config.json": b"v3"}
    store.release(newest)
    assert held.is_dir() and (held / "config.json").read_bytes() == b"v1"  # still where it was
    go.touch()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert json.loads(out) == [len(old_model), "v1", ["config.json", "model.bin"]]

    # the reader is gone: the next commit collects its folder, and the unheld v2 went at once
    current = store.commit("k", make_folder(tmp_path / "v4", {"model.bin": b"4"}), producer="t")
    assert not held.exists()
    assert [d.name for d in (store.root / "k" / ".commits").iterdir()] == [current.commit_id]


def test_delete_keeps_a_held_folder_until_its_reader_releases_it(store, tmp_path):
    store.commit("k", make_folder(tmp_path / "v1", {"a": b"one"}), producer="t")
    reader = LocalStore(StoreConfig(kind="local", root=store.root))  # another reader's handle
    held = reader.fetch("k")
    store.delete("k")
    assert not store.exists("k") and store.list() == []
    assert (held / "a").read_bytes() == b"one"
    reader.release(held)
    store.commit("k", make_folder(tmp_path / "v2", {"a": b"two"}), producer="t")
    assert not held.exists()
    assert read_folder(store.fetch("k")) == {"a": b"two"}


def test_delete_removes_the_artifact_but_not_keys_nested_under_it(store, tmp_path):
    src = make_folder(tmp_path / "out", {"f": b"x"})
    store.commit("a", src, producer="t")
    store.commit("a/b", src, producer="t")
    store.delete("a")
    assert not store.exists("a")
    assert store.list() == ["a/b"]
    nested = store.fetch("a/b")
    assert read_folder(nested) == {"f": b"x"}
    store.release(nested)  # done reading: delete may take its files too
    with pytest.raises(ArtifactNotFound, match="'a'"):
        store.fetch("a")
    store.delete("a/b")
    store.delete("a/b")  # deleting what is gone is not an error
    assert store.list() == []
    assert not (store.root / "a").exists()


def test_records_are_replaced_whole_and_kept_apart_from_artifacts(store):
    assert store.get_record("runs/r1/state.json") is None
    store.put_record("runs/r1/state.json", b'{"stage": "sft"}')
    store.put_record("runs/r1/state.json", b'{"stage": "rm"}')
    assert store.get_record("runs/r1/state.json") == b'{"stage": "rm"}'
    assert store.list() == []
    assert not store.exists("runs/r1/state.json")


@pytest.mark.parametrize("key", ["", "../escape", "a//b", "/abs", ".commits/x", "a/MANIFEST.json"])
def test_keys_that_cannot_name_an_artifact_are_refused_on_write(store, tmp_path, key):
    src = make_folder(tmp_path / "out", {"f": b"x"})
    with pytest.raises(InvalidKey) as err:
        store.commit(key, src, producer="t")
    assert isinstance(err.value, UserError)
    with pytest.raises(InvalidKey):
        store.put_record(key, b"x")


def test_a_local_path_given_as_input_is_simply_not_an_artifact(store):
    # StageContext.input asks the store first, then falls back to the path
    assert store.manifest("/tmp/data.jsonl") is None
    assert not store.exists("./data/prompts.jsonl")
    assert store.get_record("../x") is None


def test_unserialisable_metadata_fails_before_anything_is_copied(store, tmp_path):
    src = make_folder(tmp_path / "out", {"f": b"x"})
    with pytest.raises(ArtifactError, match="JSON"):
        store.commit("k", src, producer="t", metadata={"tensor": object()})
    assert not store.exists("k")
    assert list((store.root / ".staging").iterdir()) == []


def test_fetch_into_an_existing_folder_adds_the_files_and_keeps_others(store, tmp_path):
    store.commit("k", make_folder(tmp_path / "out", {"a": b"new", "d/b": b"b"}), producer="t")
    dest = make_folder(tmp_path / "dest", {"a": b"stale", "mine.txt": b"keep"})
    store.fetch("k", dest)
    assert read_folder(dest) == {"a": b"new", "d/b": b"b", "mine.txt": b"keep"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")] == []


def test_damaged_committed_files_are_caught(store, tmp_path, model_files):
    store.commit("k", make_folder(tmp_path / "out", model_files), producer="t")
    folder = store.fetch("k")
    weights = folder / "model.safetensors"
    os.chmod(weights, 0o644)
    damaged = bytearray(model_files["model.safetensors"])
    damaged[1000] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(damaged))

    with pytest.raises(ArtifactCorrupt, match="model.safetensors: sha256"):
        store.fetch("k", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    # in place, the default checks sizes only (fast); full hashing is one switch away
    assert store.fetch("k") == folder
    with pytest.raises(ArtifactCorrupt, match="model.safetensors: sha256"):
        LocalStore(StoreConfig(root=store.root), verify_sha256=True).fetch("k")

    weights.write_bytes(bytes(damaged[:10]))  # truncated
    with pytest.raises(ArtifactCorrupt, match="model.safetensors: 10 bytes, the manifest says"):
        store.fetch("k")
    weights.unlink()
    with pytest.raises(ArtifactCorrupt, match="missing"):
        store.fetch("k")


def test_a_garbled_manifest_is_reported_not_trusted(store, tmp_path):
    store.commit("k", make_folder(tmp_path / "out", {"f": b"x"}), producer="t")
    (store.root / "k" / "MANIFEST.json").write_text('{"key": "k", "files": [')
    with pytest.raises(ArtifactCorrupt, match="MANIFEST.json"):
        store.manifest("k")


# A commit in a child process whose file-size limit (RLIMIT_FSIZE) is smaller than one of the
# files: the copy fails for real part-way through. With SIGXFSZ ignored, write() fails with EFBIG
# (an I/O error inside commit, like a full disk); with SIGXFSZ at the kernel's default the
# process is killed mid-write (a crash: no except, no finally).
_COMMIT_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from xwin.artifacts.local import LocalStore
    from xwin.artifacts.config import StoreConfig

    root, key, src, limit, on_limit = sys.argv[1:]
    store = LocalStore(StoreConfig(root=root))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # CPython ignores SIGXFSZ at start-up; restore the kernel's default (kill) to crash
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if on_limit == "raise" else signal.SIG_DFL)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), hard))
    try:
        store.commit(key, Path(src), producer="crash-test")
    except OSError as e:
        print(f"OSError errno={e.errno}")
        sys.exit(3)
    print("committed")
    """
)


def commit_in_child(
    store: LocalStore, key: str, src: Path, on_limit: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _COMMIT_UNDER_LIMIT,
            str(store.root),
            key,
            str(src),
            "1000000",
            on_limit,
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture
def committed_then_big(store, tmp_path):
    """A first commit of "k", and a folder whose second file outgrows the child's limit."""
    first = store.commit("k", make_folder(tmp_path / "v1", {"a.txt": b"v1"}), producer="t")
    big = make_folder(tmp_path / "v2", {"a.txt": b"v2", "b.bin": os.urandom(3_000_000)})
    return first, big


def test_an_io_error_mid_copy_leaves_no_artifact_and_keeps_the_previous_commit(
    store, committed_then_big
):
    first, big = committed_then_big
    for key in ("k", "new"):
        result = commit_in_child(store, key, big, "raise")
        assert result.returncode == 3, result.stderr
        assert "errno=27" in result.stdout  # EFBIG: the copy of b.bin failed part-way

    assert store.manifest("k") == first
    assert read_folder(store.fetch("k")) == {"a.txt": b"v1"}
    assert not store.exists("new")
    assert store.list() == ["k"]
    assert list((store.root / ".staging").iterdir()) == []  # the failed copies were removed
    assert [d.name for d in (store.root / "k" / ".commits").iterdir()] == [first.commit_id]


def test_a_process_killed_mid_copy_leaves_nothing_visible_and_its_debris_is_collected(
    store, committed_then_big, tmp_path
):
    first, big = committed_then_big
    result = commit_in_child(store, "k", big, "crash")
    assert result.returncode == -signal.SIGXFSZ, result.stderr
    result = commit_in_child(store, "new", big, "crash")
    assert result.returncode == -signal.SIGXFSZ, result.stderr

    assert store.manifest("k") == first
    assert read_folder(store.fetch("k")) == {"a.txt": b"v1"}
    assert not store.exists("new")
    assert store.list() == ["k"]
    debris = list((store.root / ".staging").iterdir())
    assert len(debris) == 2  # the half-copied folders, invisible to readers

    old = time.time() - STALE_STAGING_S - 60  # as if the crash was a day ago
    for folder in debris:
        os.utime(folder, (old, old))
    store.commit("other", make_folder(tmp_path / "v3", {"c": b"c"}), producer="t")
    assert list((store.root / ".staging").iterdir()) == []


def test_open_store_gives_the_local_backend_for_kind_local(tmp_path):
    store = open_store(StoreConfig(kind="local", root=tmp_path / "s"))
    assert isinstance(store, LocalStore)
    store.check()
    assert (tmp_path / "s").is_dir()
