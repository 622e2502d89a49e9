"""Manifests and keys are input: a manifest the store would never write (crafted by whoever can
write the store, or damaged) is refused before fetch writes or deletes anything, and a key with
a trailing newline is not a key. The S3 side of the same is tests/integration/
test_artifacts_crafted_manifest.py."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.folders import is_key, new_commit_id, parse_manifest
from xwin.artifacts.local import LocalStore
from xwin.artifacts.store import InvalidKey, UnsafeManifest
from xwin.cli import app
from xwin.core.errors import UserError

PAYLOAD = b"payload\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(StoreConfig(kind="local", root=tmp_path / "store"))


def manifest_json(key: str, commit_id: str, paths: list[str], **entry) -> bytes:
    files = [{"path": p, "size": len(PAYLOAD), "sha256": SHA, **entry} for p in paths]
    return json.dumps({"key": key, "commit_id": commit_id, "producer": "attacker",
                       "created_at": "2025-01-01T00:00:00Z", "files": files}).encode()


def plant(store: LocalStore, key: str, commit_id: str, paths: list[str]) -> None:
    """A manifest written into the store's folder by hand, with the files it lists."""
    commit = store.root / key / ".commits" / commit_id
    for rel in paths:
        (commit / rel).parent.mkdir(parents=True, exist_ok=True)
        (commit / rel).write_bytes(PAYLOAD)
    (store.root / key / "MANIFEST.json").write_bytes(manifest_json(key, commit_id, paths))


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../escape", "climbs out of the artifact with '..'"),
        ("a/../../escape", "climbs out of the artifact with '..'"),
        ("/etc/passwd", "is absolute"),
        ("a\\..\\..\\escape", "has a backslash"),
        ("", "is empty"),
        ("a//b", "is not normalised"),
        ("./a", "is not normalised"),
        ("a/", "is not normalised"),
        ("a\nb", "has a control character"),
    ],
)
def test_a_manifest_file_path_outside_the_artifact_is_refused_naming_key_and_field(path, problem):
    data = manifest_json("models/m", new_commit_id(), ["ok.txt", path])
    with pytest.raises(UnsafeManifest) as err:
        parse_manifest(data, "store/models/m/MANIFEST.json", "models/m")
    assert "'models/m'" in str(err.value) and "files[1].path" in str(err.value)
    assert problem in str(err.value)
    assert isinstance(err.value, UserError)


@pytest.mark.parametrize(
    ("paths", "problem"),
    [(["a", "a"], "listed twice"), (["a", "a/b"], "also the folder of another file")],
)
def test_repeated_paths_and_a_file_that_is_also_a_folder_are_refused(paths, problem):
    with pytest.raises(UnsafeManifest, match=problem):
        parse_manifest(manifest_json("k", new_commit_id(), paths), "where", "k")


@pytest.mark.parametrize(
    "commit_id", ["../victim", "20250101T000000Z-0123456789ab/..", "20250101T000000Z-0123456789ab\n", ""]
)
def test_a_commit_id_the_store_never_writes_is_refused(commit_id):
    with pytest.raises(UnsafeManifest, match="commit_id"):
        parse_manifest(manifest_json("k", commit_id, ["a"]), "where", "k")


def test_sizes_and_digests_must_be_what_the_store_writes():
    with pytest.raises(UnsafeManifest, match=r"files\[0\].size -1 is negative"):
        parse_manifest(manifest_json("k", new_commit_id(), ["a"], size=-1), "where", "k")
    with pytest.raises(UnsafeManifest, match=r"files\[0\].sha256 'zz' is not"):
        parse_manifest(manifest_json("k", new_commit_id(), ["a"], sha256="zz"), "where", "k")


def test_local_fetch_of_a_crafted_manifest_writes_nothing_outside_dest(store, tmp_path):
    # <root>/k/.commits/<id>/../../../outside.txt is <root>/outside.txt: a file that exists
    commit_id = new_commit_id()
    plant(store, "k", commit_id, ["ok.txt"])
    (store.root / "outside.txt").write_bytes(PAYLOAD)
    (store.root / "k" / "MANIFEST.json").write_bytes(
        manifest_json("k", commit_id, ["ok.txt", "../../../outside.txt"]))
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(UnsafeManifest, match=r"'k'.*files\[1\].path '\.\./\.\./\.\./outside.txt'"):
        store.fetch("k", dest)
    with pytest.raises(UnsafeManifest):
        store.fetch("k")
    assert not (tmp_path / "a").exists() and not (tmp_path / "outside.txt").exists()


def test_a_crafted_manifest_does_not_block_a_fresh_commit_of_the_key(store, tmp_path):
    plant(store, "k", new_commit_id(), ["ok.txt"])
    (store.root / "k" / "MANIFEST.json").write_bytes(manifest_json("k", "../../x", ["ok.txt"]))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"honest")
    store.commit("k", src, producer="t")
    assert (store.fetch("k") / "f").read_bytes() == b"honest"


def test_a_file_name_readers_would_refuse_is_refused_at_commit(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a\\b").write_bytes(b"x")
    with pytest.raises(UnsafeManifest, match=r"cannot commit 'k'.*backslash"):
        store.commit("k", src, producer="t")
    assert not store.exists("k")


def test_a_key_with_a_trailing_newline_is_not_a_key(store, tmp_path):
    assert not is_key("models/x\n") and not is_key("models/x\n/y")
    with pytest.raises(InvalidKey):
        store.put_record("runs/r\n", b"x")
    src = tmp_path / "m"
    src.mkdir()
    (src / "f").write_text("x")
    result = CliRunner().invoke(
        app, ["artifacts", "put", str(src), "models/x\n", "--set", f"store.root={store.root}"])
    assert result.exit_code == 2, result.output
    assert "artifact key 'models/x\\n'" in result.output
    assert not any(store.root.glob("models/*"))


def test_honest_manifests_still_read(store, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"w")
    (src / "config.json").write_bytes(b"{}")
    manifest = store.commit("models/m", src, producer="t")
    assert store.manifest("models/m") == manifest
    copy = store.fetch("models/m", tmp_path / "copy")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "config.json", "sub/w.bin"]
    assert (store.fetch("models/m") / "sub" / "w.bin").read_bytes() == b"w"
