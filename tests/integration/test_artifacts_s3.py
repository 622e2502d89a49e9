"""The S3 artifact store over real HTTP: moto's S3 server, boto3 unchanged, and faults injected
on the wire by a reverse proxy (503 SlowDown answers, TCP resets) rather than in our code."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from fixtures_s3 import REGION, moto_checks_credentials

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.artifacts.folders import new_commit_id
from xwin.artifacts.s3 import S3Store
from xwin.artifacts.store import ArtifactCorrupt, ArtifactNotFound, StoreUnavailable

MB = 2**20


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_folder(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def fast_store(config: StoreConfig, **overrides) -> S3Store:
    """A store whose backoff is milliseconds, so retry tests take no time."""
    return S3Store(config.model_copy(update=overrides), backoff_s=0.01, max_backoff_s=0.05)


def raw_client(endpoint_url: str):
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION)


def object_keys(endpoint_url: str, bucket: str, prefix: str = "") -> list[str]:
    answer = raw_client(endpoint_url).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def model_like(weights_bytes: int) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"hidden_size": 64}).encode(),
        "tokenizer/tokenizer.json": b'{"model": {}}' * 50,
        "empty.txt": b"",
        "model.safetensors": os.urandom(weights_bytes),
    }


@pytest.fixture(scope="module")
def artifact_files() -> dict[str, bytes]:
    """A model-like folder whose weights (6 MB) go as two parts (5 MB + 1 MB)."""
    return model_like(6 * MB)


@pytest.fixture
def proxied_config(s3_store_config, s3_fault_proxy) -> StoreConfig:
    return s3_store_config.model_copy(update={"endpoint_url": s3_fault_proxy.endpoint_url})


def test_round_trip_of_a_multi_file_artifact_with_a_multipart_file(
    proxied_config, s3_fault_proxy, tmp_path
):
    artifact_files = model_like(12 * MB)  # three parts: 5 + 5 + 2 MB
    store = fast_store(proxied_config)
    src = make_folder(tmp_path / "out", artifact_files)
    manifest = store.commit("sft/abc", src, producer="sft", config_digest="d1", metadata={"n": 3})

    assert {f.path: (f.size, f.sha256) for f in manifest.files} == {
        rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in artifact_files.items()
    }
    sent = [(m, p) for m, p, _ in s3_fault_proxy.requests if m in ("PUT", "POST")]
    parts = [p for m, p in sent if "partNumber=" in p]
    assert len(parts) == 3 and all("model.safetensors" in p for p in parts)  # 5 + 5 + 2 MB
    # the manifest goes last, once every file (and the multipart completion) is in
    assert sent[-1][0] == "PUT" and sent[-1][1].endswith("/xwin/sft/abc/MANIFEST.json")
    assert sum("MANIFEST.json" in p for _, p in sent) == 1
    assert store.manifest("sft/abc") == manifest

    s3_fault_proxy.requests.clear()
    cached = store.fetch("sft/abc")
    assert cached == Path(os.environ["XWIN_CACHE_DIR"]) / "artifacts" / manifest.commit_id
    assert read_folder(cached) == artifact_files
    ranges = [r for m, p, r in s3_fault_proxy.requests if m == "GET" and "model.safetensors" in p]
    assert len(ranges) == 3 and all(r.startswith("bytes=") for r in ranges)  # ranged download

    s3_fault_proxy.requests.clear()
    assert store.fetch("sft/abc") == cached  # complete: reused, only the manifest is read
    assert [m for m, _, _ in s3_fault_proxy.requests] == ["GET"]

    copy = store.fetch("sft/abc", tmp_path / "copy")
    assert read_folder(copy) == artifact_files


def test_list_shows_only_committed_keys(s3_store_config, s3_server, tmp_path):
    store = fast_store(s3_store_config)
    src = make_folder(tmp_path / "out", {"MANIFEST.json": b"a file that happens to be named so"})
    for key in ["sft/b", "sft/a", "sample/k/part-00000-of-00002", "sft"]:
        store.commit(key, src, producer="t")
    store.put_record("runs/r1.json", b"{}")
    # an upload that never got its manifest
    raw_client(s3_server).put_object(
        Bucket=s3_store_config.bucket, Key="xwin/rm/x/.commits/20250101T000000Z-0/f", Body=b"x"
    )
    assert store.list() == ["sample/k/part-00000-of-00002", "sft", "sft/a", "sft/b"]
    assert store.list("sft/") == ["sft/a", "sft/b"]
    assert store.list("sft") == ["sft", "sft/a", "sft/b"]
    assert store.list("rm") == []
    assert not store.exists("rm/x")


def test_recommit_replaces_the_artifact_and_removes_the_old_commit(
    s3_store_config, s3_server, tmp_path
):
    store = fast_store(s3_store_config)
    first = store.commit("k", make_folder(tmp_path / "v1", {"a": b"one", "b": b"b"}), producer="t")
    assert read_folder(store.fetch("k")) == {"a": b"one", "b": b"b"}
    # uploads nobody published: one from a process that died a year ago, one maybe still running
    dead, running = "20250101T000000Z-0123456789ab", new_commit_id()
    for commit_id in (dead, running):
        raw_client(s3_server).put_object(
            Bucket=s3_store_config.bucket, Key=f"xwin/k/.commits/{commit_id}/a", Body=b"?"
        )
    second = store.commit("k", make_folder(tmp_path / "v2", {"a": b"two"}), producer="t")

    assert second.commit_id != first.commit_id
    assert read_folder(store.fetch("k")) == {"a": b"two"}
    assert object_keys(s3_server, s3_store_config.bucket) == sorted(
        [
            f"xwin/k/.commits/{second.commit_id}/a",
            f"xwin/k/.commits/{running}/a",
            "xwin/k/MANIFEST.json",
        ]
    )


def test_delete_and_records(s3_store_config, s3_server, tmp_path):
    store = fast_store(s3_store_config)
    src = make_folder(tmp_path / "out", {"f": b"x"})
    store.commit("a", src, producer="t")
    store.commit("a/b", src, producer="t")
    store.delete("a")
    assert store.list() == ["a/b"]
    with pytest.raises(ArtifactNotFound, match="'a'"):
        store.fetch("a")
    store.delete("a/b")
    assert object_keys(s3_server, s3_store_config.bucket) == []

    assert store.get_record("runs/r1/state.json") is None
    store.put_record("runs/r1/state.json", b"1")
    store.put_record("runs/r1/state.json", b"2")
    assert store.get_record("runs/r1/state.json") == b"2"
    assert store.list() == []


def test_an_object_changed_behind_the_stores_back_is_caught(
    s3_store_config, s3_server, artifact_files, tmp_path
):
    store = fast_store(s3_store_config)
    manifest = store.commit("k", make_folder(tmp_path / "out", artifact_files), producer="t")
    weights = f"xwin/k/.commits/{manifest.commit_id}/model.safetensors"
    damaged = bytearray(artifact_files["model.safetensors"])
    damaged[5 * MB + 7] ^= 0xFF  # same size, one byte flipped in the second part
    raw_client(s3_server).put_object(
        Bucket=s3_store_config.bucket, Key=weights, Body=bytes(damaged)
    )

    with pytest.raises(ArtifactCorrupt, match="model.safetensors: sha256"):
        store.fetch("k")
    with pytest.raises(ArtifactCorrupt, match="model.safetensors: sha256"):
        store.fetch("k", tmp_path / "copy")
    cache = Path(os.environ["XWIN_CACHE_DIR"]) / "artifacts"
    assert [p for p in cache.iterdir() if p.is_dir()] == []  # nothing half-trusted left
    assert not (tmp_path / "copy").exists()

    raw_client(s3_server).put_object(Bucket=s3_store_config.bucket, Key=weights, Body=b"short")
    with pytest.raises(ArtifactCorrupt, match="model.safetensors: 5 bytes, the manifest says"):
        store.fetch("k")
    raw_client(s3_server).delete_object(Bucket=s3_store_config.bucket, Key=weights)
    with pytest.raises(ArtifactCorrupt, match="missing"):
        store.fetch("k")


def test_a_damaged_cache_is_downloaded_again(
    s3_store_config, s3_fault_proxy, proxied_config, tmp_path
):
    store = fast_store(proxied_config)
    store.commit("k", make_folder(tmp_path / "out", {"a": b"abc" * 1000}), producer="t")
    cached = store.fetch("k")
    (cached / "a").write_bytes(b"abc")
    s3_fault_proxy.requests.clear()
    assert read_folder(store.fetch("k")) == {"a": b"abc" * 1000}
    assert any(m == "GET" and p.endswith("/a") for m, p, _ in s3_fault_proxy.requests)


def test_a_missing_bucket_is_store_unavailable_naming_bucket_and_endpoint(
    s3_store_config, s3_server, tmp_path
):
    store = fast_store(s3_store_config, bucket="xwin-no-such-bucket")
    src = make_folder(tmp_path / "out", {"f": b"x"})
    for attempt in (
        lambda: store.commit("k", src, producer="t"),
        lambda: store.exists("k"),
        lambda: store.list(),
        lambda: store.put_record("r", b"x"),
        store.check,
    ):
        with pytest.raises(StoreUnavailable) as err:
            attempt()
        assert "'xwin-no-such-bucket' does not exist" in str(err.value)
        assert s3_server in str(err.value)


def test_rejected_credentials_are_store_unavailable_and_no_secret_is_shown(
    s3_store_config, s3_server, monkeypatch, caplog, tmp_path
):
    iam = boto3.client("iam", endpoint_url=s3_server, region_name=REGION)
    user = f"xwin-{s3_store_config.bucket}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    src = make_folder(tmp_path / "out", {"f": b"x"})
    wrong_secret = "wrong-secret-0123456789abcdef"
    caplog.set_level(logging.DEBUG, logger="xwin")

    with moto_checks_credentials(s3_server):
        for key_id, secret, code in [
            ("AKIAUNKNOWNKEY000000", wrong_secret, "InvalidAccessKeyId"),
            (key["AccessKeyId"], wrong_secret, "SignatureDoesNotMatch"),
        ]:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            store = fast_store(s3_store_config)
            with pytest.raises(StoreUnavailable) as err:
                store.commit("k", src, producer="t")
            message = str(err.value)
            assert "refused the credentials" in message and code in message
            assert s3_store_config.bucket in message and s3_server in message
            assert secret not in message and secret not in caplog.text

        # the right secret passes the same check, so the failures above were the credentials
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        store = fast_store(s3_store_config)
        store.commit("k", src, producer="t")
        assert read_folder(store.fetch("k")) == {"f": b"x"}
    assert key["SecretAccessKey"] not in caplog.text


def test_an_unreachable_endpoint_is_store_unavailable_after_max_attempts(s3_store_config, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    store = fast_store(s3_store_config, endpoint_url=endpoint, max_attempts=4)
    with (
        caplog.at_level(logging.WARNING, logger="xwin"),
        pytest.raises(StoreUnavailable, match=f"cannot reach S3 .* at {endpoint}"),
    ):
        store.exists("k")
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3  # four attempts in all


@pytest.mark.parametrize("action", ["503", "reset"])
def test_a_part_upload_failing_once_is_retried_and_the_commit_succeeds(
    proxied_config, s3_fault_proxy, s3_server, artifact_files, tmp_path, action
):
    store = fast_store(proxied_config)
    fault = s3_fault_proxy.fail("PUT", "partNumber=2", action=action, times=1)
    src = make_folder(tmp_path / "out", artifact_files)
    manifest = store.commit("k", src, producer="t")
    assert fault.hits == 1
    assert read_folder(store.fetch("k")) == artifact_files
    assert store.fetch("k") == Path(os.environ["XWIN_CACHE_DIR"]) / "artifacts" / manifest.commit_id
    uploads = raw_client(s3_server).list_multipart_uploads(Bucket=proxied_config.bucket)
    assert uploads.get("Uploads", []) == []  # the broken multipart upload was aborted


@pytest.mark.parametrize("action", ["503", "reset"])
def test_a_ranged_download_failing_once_is_retried(
    proxied_config, s3_fault_proxy, artifact_files, tmp_path, action
):
    store = fast_store(proxied_config)
    store.commit("k", make_folder(tmp_path / "out", artifact_files), producer="t")
    fault = s3_fault_proxy.fail("GET", "model.safetensors", action=action, times=1)
    assert read_folder(store.fetch("k", tmp_path / "copy")) == artifact_files
    assert fault.hits == 1


def test_a_part_upload_failing_for_good_leaves_no_partial_artifact(
    proxied_config, s3_fault_proxy, s3_server, artifact_files, tmp_path
):
    store = fast_store(proxied_config, max_attempts=2)
    first = store.commit("k", make_folder(tmp_path / "v1", {"a": b"v1"}), producer="t")
    fault = s3_fault_proxy.fail("PUT", "partNumber=2", action="503", times=None)
    src = make_folder(tmp_path / "v2", artifact_files)

    with pytest.raises(StoreUnavailable, match="kept failing .*SlowDown.* after 2 attempts"):
        store.commit("k", src, producer="t")
    assert fault.hits == 2  # our attempts, and only ours, count (botocore's retries are off)
    with pytest.raises(StoreUnavailable):
        fast_store(proxied_config, max_attempts=1).commit("new", src, producer="t")

    assert store.manifest("k") == first
    assert read_folder(store.fetch("k")) == {"a": b"v1"}
    assert not store.exists("new")
    assert store.list() == ["k"]
    assert object_keys(s3_server, proxied_config.bucket) == [
        f"xwin/k/.commits/{first.commit_id}/a",
        "xwin/k/MANIFEST.json",
    ]
    uploads = raw_client(s3_server).list_multipart_uploads(Bucket=proxied_config.bucket)
    assert uploads.get("Uploads", []) == []


def test_throttled_small_requests_are_retried(proxied_config, s3_fault_proxy, tmp_path):
    store = fast_store(proxied_config)
    store.commit("k", make_folder(tmp_path / "out", {"a": b"x"}), producer="t")
    fault = s3_fault_proxy.fail("GET", "MANIFEST.json", action="503", times=2)
    assert store.exists("k")
    assert fault.hits == 2


def test_non_keys_are_not_artifacts_and_cost_no_request(proxied_config, s3_fault_proxy):
    store = fast_store(proxied_config)
    assert store.manifest("/data/prompts.jsonl") is None
    assert not store.exists("../x")
    assert s3_fault_proxy.requests == []


def test_open_store_gives_the_s3_backend_for_kind_s3(s3_store_config):
    store = open_store(s3_store_config)
    assert isinstance(store, S3Store)
    store.check()


def test_a_manifest_that_cannot_be_written_leaves_nothing_behind(
    proxied_config, s3_fault_proxy, s3_server, tmp_path
):
    store = fast_store(proxied_config)
    fault = s3_fault_proxy.fail("PUT", "/k/MANIFEST.json", action="503", times=None)
    with pytest.raises(StoreUnavailable, match="writing the manifest of k"):
        store.commit("k", make_folder(tmp_path / "out", {"a": b"x"}), producer="t")
    assert fault.hits == proxied_config.max_attempts
    assert not store.exists("k")
    assert object_keys(s3_server, proxied_config.bucket) == []


def test_a_manifest_put_whose_answer_is_lost_still_commits(
    proxied_config, s3_fault_proxy, tmp_path
):
    # every manifest PUT reaches S3 but its answer never comes back: the store looks, sees its
    # own commit published, and keeps the files instead of deleting them under the manifest
    store = fast_store(proxied_config)
    fault = s3_fault_proxy.fail("PUT", "/k/MANIFEST.json", action="lose-answer", times=None)
    manifest = store.commit("k", make_folder(tmp_path / "out", {"a": b"x"}), producer="t")
    assert fault.hits == proxied_config.max_attempts
    assert store.manifest("k") == manifest
    assert read_folder(store.fetch("k")) == {"a": b"x"}


def test_processes_fetching_the_same_commit_at_once_download_it_once(
    proxied_config, s3_fault_proxy, artifact_files, tmp_path
):
    store = fast_store(proxied_config)
    store.commit("k", make_folder(tmp_path / "out", artifact_files), producer="t")
    s3_fault_proxy.requests.clear()
    with ThreadPoolExecutor(4) as pool:  # like the ranks of one node, each with its own lock
        folders = list(pool.map(lambda _: fast_store(proxied_config).fetch("k"), range(4)))
    assert len(set(folders)) == 1
    assert read_folder(folders[0]) == artifact_files
    downloads = [p for m, p, _ in s3_fault_proxy.requests if m == "GET" and "/.commits/" in p]
    assert len(downloads) == len(artifact_files) + 1  # one GET per file, two for the 2-part file
