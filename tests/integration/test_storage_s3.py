"""The S3 object store against a real SeaweedFS server."""

from __future__ import annotations

import dataclasses
import io
import itertools
import random
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from shared.config import Settings
from shared.storage import (
    S3_MIN_PART_BYTES,
    ObjectNotFound,
    ObjectTooLarge,
    S3ObjectStore,
    build_store,
    tenant_key,
)

if TYPE_CHECKING:
    from tests.fixtures.seaweed import S3Server

# registered here rather than imported, so pytest rewrites its asserts like a conftest's
pytest_plugins = ["tests.fixtures.seaweed"]

MIN_PART_BYTES = S3_MIN_PART_BYTES

SMALL = random.Random(1).randbytes(200_000)
# two parts at the 5 MiB minimum part size: the smallest object that must go multipart
BIG = random.Random(2).randbytes(MIN_PART_BYTES + 512 * 1024)
REFUSED_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}


def pending_uploads(store: S3ObjectStore) -> list[str]:
    """Keys with an unfinished multipart upload in the store's bucket."""
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return [u.get("Key", "") for u in uploads]


def part_count(store: S3ObjectStore, key: str) -> int:
    """Parts the object was uploaded in, from its ETag (`"<md5>-N"` for multipart, else 1)."""
    etag = store.client.head_object(Bucket=store.bucket, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def fresh_bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def test_round_trip(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    assert s3_store.put_bytes("a/b/c.bin", SMALL, "video/mp4") == len(SMALL)
    assert s3_store.get_bytes("a/b/c.bin") == SMALL
    assert s3_store.size("a/b/c.bin") == len(SMALL)
    assert s3_store.exists("a/b/c.bin")
    assert not s3_store.exists("a/b/missing.bin")
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="a/b/c.bin")
    assert head["ContentType"] == "video/mp4"

    source = tmp_path / "small.bin"
    source.write_bytes(SMALL[:1000])
    assert s3_store.put_file("a/file.bin", source) == 1000
    assert part_count(s3_store, "a/file.bin") == 1
    target = tmp_path / "out" / "copy.bin"
    s3_store.download("a/file.bin", target)
    assert target.read_bytes() == SMALL[:1000]

    s3_store.put_bytes("a/b/c.bin", b"replaced")
    assert s3_store.get_bytes("a/b/c.bin") == b"replaced"
    s3_store.delete("a/b/c.bin")
    s3_store.delete("a/b/c.bin")
    assert not s3_store.exists("a/b/c.bin")
    assert s3_store.list("") == ["a/file.bin"]


def test_missing_key_raises_not_found(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        s3_store.get_bytes("nope")
    with pytest.raises(ObjectNotFound):
        s3_store.size("nope")
    with pytest.raises(ObjectNotFound):
        s3_store.iter_range("nope")
    with pytest.raises(ObjectNotFound):
        s3_store.download("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 0), (5, 5), (10, 99), (0, len(SMALL) - 1), (150_000, None), (199_999, None)],
)
def test_iter_range_slices(s3_store: S3ObjectStore, start: int, end: int | None) -> None:
    s3_store.put_bytes("r.bin", SMALL)
    got = list(s3_store.iter_range("r.bin", start, end, chunk_size=4096))
    assert b"".join(got) == SMALL[start : None if end is None else end + 1]
    assert all(0 < len(c) <= 4096 for c in got)


def test_iter_range_edges(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("r.bin", SMALL[:100])
    s3_store.put_bytes("empty", b"")
    assert b"".join(s3_store.iter_range("r.bin", 90, 1000)) == SMALL[90:100]
    assert list(s3_store.iter_range("r.bin", 100)) == []
    assert list(s3_store.iter_range("empty")) == []
    assert s3_store.get_bytes("empty") == b""
    with pytest.raises(ValueError):
        s3_store.iter_range("r.bin", 10, 5)


def test_put_file_above_threshold_is_multipart(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(BIG)
    assert s3_store.put_file("big/file.bin", source, "video/mp4") == len(BIG)
    assert part_count(s3_store, "big/file.bin") == 2
    assert s3_store.size("big/file.bin") == len(BIG)
    target = tmp_path / "back.bin"
    s3_store.download("big/file.bin", target)
    assert target.read_bytes() == BIG
    assert pending_uploads(s3_store) == []


def test_put_stream_small_and_multipart(s3_store: S3ObjectStore) -> None:
    assert s3_store.put_stream("s/small", io.BytesIO(SMALL), "audio/wav") == len(SMALL)
    assert s3_store.get_bytes("s/small") == SMALL
    assert part_count(s3_store, "s/small") == 1

    assert s3_store.put_stream("s/big", chunks(BIG, 300_000), max_bytes=len(BIG)) == len(BIG)
    assert part_count(s3_store, "s/big") == 2
    assert b"".join(s3_store.iter_range("s/big", 0)) == BIG
    assert pending_uploads(s3_store) == []


@pytest.mark.parametrize("limit", [100_000, MIN_PART_BYTES + 100_000])
def test_put_stream_over_limit_leaves_nothing(s3_store: S3ObjectStore, limit: int) -> None:
    # the larger limit lets a first part reach the server before the stream is refused
    with pytest.raises(ObjectTooLarge):
        s3_store.put_stream("s/too-big", chunks(BIG, 256 * 1024), max_bytes=limit)
    assert not s3_store.exists("s/too-big")
    assert s3_store.list("") == []
    assert pending_uploads(s3_store) == []


def test_put_stream_stops_reading_once_over_limit(s3_store: S3ObjectStore) -> None:
    with pytest.raises(ObjectTooLarge):
        s3_store.put_stream("s/endless", itertools.repeat(b"x" * 65536), max_bytes=MIN_PART_BYTES)
    assert s3_store.list("") == []
    assert pending_uploads(s3_store) == []


def test_failed_put_stream_aborts_multipart(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("s/obj", b"old")

    def broken() -> Iterator[bytes]:
        yield from chunks(BIG, 1 << 20)
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        s3_store.put_stream("s/obj", broken())
    assert s3_store.get_bytes("s/obj") == b"old"
    assert pending_uploads(s3_store) == []


def test_list_and_delete_prefix(s3_store: S3ObjectStore) -> None:
    keys = [
        tenant_key("t1", "avatars", "a1", "video.mp4"),
        tenant_key("t1", "avatars", "a1", "dataset", "0001.npz"),
        tenant_key("t1", "avatars", "a2", "video.mp4"),
        tenant_key("t1", "renders", "r1", "out.mp4"),
        tenant_key("t10", "avatars", "a9", "video.mp4"),
        "top.bin",
    ]
    for key in keys:
        s3_store.put_bytes(key, key.encode())
    assert s3_store.list("") == sorted(keys)
    assert s3_store.list("tenants/t1/") == sorted(k for k in keys if k.startswith("tenants/t1/"))
    assert s3_store.list("tenants/t1/avatars/a") == sorted(keys[:3])
    assert s3_store.list("nothing/here") == []

    s3_store.client.create_multipart_upload(Bucket=s3_store.bucket, Key="tenants/t1/pending")
    assert s3_store.delete_prefix("tenants/t1/avatars/a1/") == 2
    assert s3_store.list("tenants/t1/avatars/") == ["tenants/t1/avatars/a2/video.mp4"]
    assert s3_store.delete_prefix("tenants/t1/") == 2
    assert s3_store.list("") == ["tenants/t10/avatars/a9/video.mp4", "top.bin"]
    assert pending_uploads(s3_store) == []
    assert s3_store.delete_prefix("tenants/t1/") == 0


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a\\b", "a//b"])
def test_invalid_keys_are_rejected(s3_store: S3ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        s3_store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        s3_store.put_stream(key, [b"x"])
    with pytest.raises(ValueError):
        s3_store.presign_get(key, 60)
    assert s3_store.list("") == []


def test_presigned_get_with_plain_http(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("p/video.mp4", SMALL, "video/mp4")
    url = s3_store.presign_get("p/video.mp4", 60)
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == SMALL

    ranged = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == SMALL[10:20]

    tampered = url.replace("p/video.mp4", "p/other.mp4")
    assert httpx.get(tampered).status_code == 403
    assert httpx.get(url.split("?")[0]).status_code == 403


def test_presigned_upload_enforces_the_size_limit(s3_store: S3ObjectStore) -> None:
    upload = s3_store.presign_upload("u/ok.mp4", 10_000, 60, "video/mp4")
    assert upload is not None
    assert upload.method == "POST"
    assert upload.max_bytes == 10_000
    assert upload.expires_in == 60

    ok = httpx.post(upload.url, data=upload.fields, files={"file": ("v.mp4", SMALL[:10_000])})
    assert ok.status_code in (200, 201, 204), ok.text
    assert s3_store.get_bytes("u/ok.mp4") == SMALL[:10_000]

    big = s3_store.presign_upload("u/big.mp4", 10_000, 60, "video/mp4")
    assert big is not None
    refused = httpx.post(big.url, data=big.fields, files={"file": ("v.mp4", SMALL[:10_001])})
    assert 400 <= refused.status_code < 500, refused.text
    assert not s3_store.exists("u/big.mp4")

    # the policy pins the key: the same form cannot write elsewhere
    moved = {**upload.fields, "key": "u/elsewhere.mp4"}
    refused = httpx.post(upload.url, data=moved, files={"file": ("v.mp4", b"x")})
    assert 400 <= refused.status_code < 500, refused.text
    assert not s3_store.exists("u/elsewhere.mp4")
    assert pending_uploads(s3_store) == []


def test_wrong_credentials_are_refused(s3_server: S3Server, s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("k", b"v")
    for client in (
        s3_server.client(secret_key="not-the-secret"),
        dataclasses.replace(s3_server, access_key="unknown-key").client(),
    ):
        with pytest.raises(ClientError) as info:
            client.get_object(Bucket=s3_store.bucket, Key="k")
        assert info.value.response["Error"]["Code"] in REFUSED_CODES
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError):
            client.put_object(Bucket=s3_store.bucket, Key="intruder", Body=b"x")
    assert s3_store.list("") == ["k"]

    with pytest.raises(ClientError):
        S3ObjectStore(
            bucket=s3_store.bucket,
            endpoint_url=s3_server.endpoint_url,
            region=s3_server.region,
            access_key=s3_server.access_key,
            secret_key="not-the-secret",
        )


def test_ensure_bucket_is_idempotent_and_ping(s3_server: S3Server) -> None:
    bucket = fresh_bucket_name()
    first = s3_server.make_store(bucket)
    first.put_bytes("k", b"v")
    second = s3_server.make_store(bucket)
    assert second.get_bytes("k") == b"v"
    second.ping()


def test_unreachable_store_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EndpointConnectionError):
        S3ObjectStore(
            bucket="unreachable",
            endpoint_url=f"http://127.0.0.1:{port}",
            region="us-east-1",
            access_key="a",
            secret_key="b",
        )


def test_build_store_s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TH_S3_MULTIPART_THRESHOLD", "TH_STORAGE_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(
        _env_file=None,
        storage_backend="s3",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_bucket=fresh_bucket_name(),
        s3_region=s3_server.region,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )
    store = build_store(settings)
    assert isinstance(store, S3ObjectStore)
    assert store.bucket == settings.s3_bucket
    assert store.multipart_threshold == settings.s3_multipart_threshold
    store.put_bytes("x", b"1")
    assert store.get_bytes("x") == b"1"
    store.ping()


def test_ping_raises_when_the_bucket_is_gone(s3_store: S3ObjectStore) -> None:
    s3_store.ping()
    s3_store.client.delete_bucket(Bucket=s3_store.bucket)
    with pytest.raises(ClientError):
        s3_store.ping()
