"""A manifest in the bucket is input, not truth: one crafted by whoever can write the bucket (file
paths that climb out with `..`, a commit id that names a folder outside the download cache) is
refused before `fetch` writes or deletes anything, against moto's S3 server over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import boto3
import pytest
from fixtures_s3 import REGION

from xwin.artifacts.folders import new_commit_id
from xwin.artifacts.s3 import S3Store
from xwin.artifacts.store import UnsafeManifest
from xwin.core.errors import UserError

PAYLOAD = b"written by whoever can write the bucket\n"


def put_crafted(s3_store_config, key: str, commit_id: str, files: list[dict]) -> None:
    """A manifest written straight into the bucket, plus an object for every listed path."""
    client = boto3.client("s3", endpoint_url=s3_store_config.endpoint_url, region_name=REGION)
    manifest = {"key": key, "commit_id": commit_id, "producer": "attacker",
                "created_at": "2025-01-01T00:00:00Z", "files": files}
    bucket = s3_store_config.bucket
    client.put_object(Bucket=bucket, Key=f"xwin/{key}/MANIFEST.json", Body=json.dumps(manifest).encode())
    for entry in files:
        client.put_object(Bucket=bucket, Key=f"xwin/{key}/.commits/{commit_id}/{entry['path']}", Body=PAYLOAD)


def entry(path: str) -> dict:
    return {"path": path, "size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()}


def store(config) -> S3Store:
    return S3Store(config, backoff_s=0.01, max_backoff_s=0.05)


def test_a_file_path_climbing_out_of_the_cache_is_refused_and_nothing_is_written(
    s3_store_config, tmp_path
):
    cache = Path(os.environ["XWIN_CACHE_DIR"]) / "artifacts"
    escaped = cache.parent / "escaped.txt"  # <cache>/<staging>/../../escaped.txt
    put_crafted(s3_store_config, "models/evil", new_commit_id(), [entry("ok.txt"), entry("../../escaped.txt")])

    for dest in (None, tmp_path / "dest" / "copy"):
        with pytest.raises(UnsafeManifest) as err:
            store(s3_store_config).fetch("models/evil", dest)
        message = str(err.value)
        assert "models/evil" in message and "files[1].path" in message and "'..'" in message
        assert isinstance(err.value, UserError)  # a stage exits 2: never retried
    assert not escaped.exists()
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "dest" / "copy").exists()


def test_a_commit_id_naming_a_folder_outside_the_cache_is_refused_and_nothing_is_deleted(
    s3_store_config, tmp_path
):
    cache = Path(os.environ["XWIN_CACHE_DIR"]) / "artifacts"
    victim = cache.parent / "victim"  # what <cache>/../victim names
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_bytes(b"keep me")
    put_crafted(s3_store_config, "models/evil", "../victim", [entry("a.txt")])

    with pytest.raises(UnsafeManifest, match=r"models/evil.*commit_id '\.\./victim'"):
        store(s3_store_config).fetch("models/evil")
    assert (victim / "precious.txt").read_bytes() == b"keep me"


def test_a_manifest_for_another_key_is_refused(s3_store_config, tmp_path):
    """A manifest copied under another key would make fetch download that key's files."""
    s3 = store(s3_store_config)
    committed = s3.commit("models/real", _folder(tmp_path / "real"), producer="t")
    client = boto3.client("s3", endpoint_url=s3_store_config.endpoint_url, region_name=REGION)
    client.put_object(Bucket=s3_store_config.bucket, Key="xwin/models/other/MANIFEST.json",
                      Body=committed.model_dump_json().encode())
    with pytest.raises(UnsafeManifest, match=r"models/other.*key 'models/real'"):
        s3.fetch("models/other")
    assert s3.fetch("models/real").is_dir()  # the honest one still reads


def _folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a")
    return root
