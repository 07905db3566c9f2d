"""The local-directory object store and the key helpers."""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from shared.storage import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectTooLarge,
    build_store,
    tenant_key,
)

DATA = random.Random(7).randbytes(200_000)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def all_files(root: Path) -> list[str]:
    """Every file under root, temp files included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_round_trip(store: LocalObjectStore, tmp_path: Path) -> None:
    assert store.put_bytes("a/b/c.bin", DATA, "application/octet-stream") == len(DATA)
    assert store.get_bytes("a/b/c.bin") == DATA
    assert store.size("a/b/c.bin") == len(DATA)
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/missing.bin")

    source = tmp_path / "source.bin"
    source.write_bytes(DATA[:1000])
    assert store.put_file("a/file.bin", source) == 1000
    target = tmp_path / "out" / "nested" / "copy.bin"
    store.download("a/file.bin", target)
    assert target.read_bytes() == DATA[:1000]

    store.put_bytes("a/b/c.bin", b"replaced")
    assert store.get_bytes("a/b/c.bin") == b"replaced"
    assert all_files(store.root) == ["a/b/c.bin", "a/file.bin"]

    store.delete("a/b/c.bin")
    store.delete("a/b/c.bin")
    assert not store.exists("a/b/c.bin")
    assert not (store.root / "a" / "b").exists()


def test_missing_key_raises_not_found(store: LocalObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope")
    with pytest.raises(ObjectNotFound):
        store.size("nope")
    with pytest.raises(ObjectNotFound):
        store.iter_range("nope")
    with pytest.raises(ObjectNotFound):
        store.download("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_empty_object(store: LocalObjectStore) -> None:
    assert store.put_bytes("empty", b"") == 0
    assert store.get_bytes("empty") == b""
    assert store.size("empty") == 0
    assert list(store.iter_range("empty")) == []


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 0), (5, 5), (10, 99), (0, len(DATA) - 1), (150_000, None), (199_999, None)],
)
def test_iter_range_slices(store: LocalObjectStore, start: int, end: int | None) -> None:
    store.put_bytes("r.bin", DATA)
    chunks = list(store.iter_range("r.bin", start, end, chunk_size=4096))
    expected = DATA[start : None if end is None else end + 1]
    assert b"".join(chunks) == expected
    assert all(0 < len(c) <= 4096 for c in chunks)


def test_iter_range_edges(store: LocalObjectStore) -> None:
    store.put_bytes("r.bin", DATA[:100])
    assert b"".join(store.iter_range("r.bin", 90, 1000)) == DATA[90:100]
    assert list(store.iter_range("r.bin", 100)) == []
    assert list(store.iter_range("r.bin", 500, 600)) == []
    with pytest.raises(ValueError):
        store.iter_range("r.bin", -1)
    with pytest.raises(ValueError):
        store.iter_range("r.bin", 10, 5)


def test_put_stream_from_file_and_iterable(store: LocalObjectStore) -> None:
    assert store.put_stream("s/file", io.BytesIO(DATA)) == len(DATA)
    assert store.get_bytes("s/file") == DATA
    pieces = (DATA[i : i + 7000] for i in range(0, len(DATA), 7000))
    assert store.put_stream("s/gen", pieces, max_bytes=len(DATA)) == len(DATA)
    assert store.get_bytes("s/gen") == DATA


def test_put_stream_over_limit_leaves_nothing(store: LocalObjectStore) -> None:
    with pytest.raises(ObjectTooLarge):
        store.put_stream("s/big", io.BytesIO(DATA), max_bytes=len(DATA) - 1)
    assert not store.exists("s/big")
    assert all_files(store.root) == []


def test_put_stream_stops_reading_once_over_limit(store: LocalObjectStore) -> None:
    endless = itertools.repeat(b"x" * 1000)
    with pytest.raises(ObjectTooLarge):
        store.put_stream("s/endless", endless, max_bytes=10_000)
    assert all_files(store.root) == []


def test_failed_put_stream_keeps_previous_object(store: LocalObjectStore) -> None:
    store.put_bytes("s/obj", b"old")

    def broken() -> Iterator[bytes]:
        yield b"new data"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put_stream("s/obj", broken())
    with pytest.raises(ObjectTooLarge):
        store.put_stream("s/obj", [b"12345", b"6"], max_bytes=5)
    assert store.get_bytes("s/obj") == b"old"
    assert all_files(store.root) == ["s/obj"]


def test_list_and_delete_prefix(store: LocalObjectStore) -> None:
    keys = [
        "tenants/t1/avatars/a1/video.mp4",
        "tenants/t1/avatars/a1/dataset/0001.npz",
        "tenants/t1/avatars/a2/video.mp4",
        "tenants/t1/renders/r1/out.mp4",
        "tenants/t10/avatars/a9/video.mp4",
        "top.bin",
    ]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list("") == sorted(keys)
    assert store.list("tenants/t1/") == sorted(k for k in keys if k.startswith("tenants/t1/"))
    assert store.list("tenants/t1") == sorted(k for k in keys if k.startswith("tenants/t1"))
    assert store.list("tenants/t1/avatars/a") == sorted(keys[:3])
    assert store.list("nothing/here") == []

    assert store.delete_prefix("tenants/t1/avatars/a1/") == 2
    assert store.list("tenants/t1/avatars/") == ["tenants/t1/avatars/a2/video.mp4"]
    assert not (store.root / "tenants/t1/avatars/a1").exists()
    assert store.delete_prefix("tenants/t1/") == 2
    assert store.list("") == ["tenants/t10/avatars/a9/video.mp4", "top.bin"]
    assert store.delete_prefix("tenants/t1/") == 0


def test_list_ignores_in_flight_temp_files(store: LocalObjectStore) -> None:
    store.put_bytes("d/real", b"1")
    (store.root / "d" / ".tmp-abc123").write_bytes(b"partial")
    assert store.list("") == ["d/real"]
    assert store.delete_prefix("d/") == 1


BAD_KEYS = [
    "",
    "/etc/passwd",
    "..",
    "../outside",
    "a/../../outside",
    "a/..",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
    "a/.tmp-x",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_rejected(store: LocalObjectStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.put_stream(key, [b"x"])
    with pytest.raises(ValueError):
        store.get_bytes(key)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert all_files(tmp_path) == []


@pytest.mark.parametrize("prefix", ["/abs", "../", "a/../", "a\\b"])
def test_invalid_prefixes_are_rejected(store: LocalObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        store.list(prefix)
    with pytest.raises(ValueError):
        store.delete_prefix(prefix)


def test_tenant_key() -> None:
    assert tenant_key("t1", "avatars", "a1", "video.mp4") == "tenants/t1/avatars/a1/video.mp4"
    assert tenant_key("t1") == "tenants/t1"
    for parts in [
        ("",),
        ("t1", ""),
        ("t1", "a/b"),
        ("..",),
        ("t1", ".."),
        ("t1", "."),
        ("a\\b",),
        ("t1", ".tmp-x"),
    ]:
        with pytest.raises(ValueError):
            tenant_key(*parts)


def test_presign_is_not_offered_and_ping(store: LocalObjectStore) -> None:
    store.put_bytes("k", b"v")
    assert store.presign_get("k", 60) is None
    assert store.presign_upload("k", 100, 60) is None
    store.ping()
    store.root.rename(store.root.with_name("moved"))
    with pytest.raises(OSError):
        store.ping()


def test_build_store_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TH_STORAGE_DIR", raising=False)
    settings = Settings(_env_file=None, storage_backend="local", data_dir=tmp_path)
    store = build_store(settings)
    assert isinstance(store, LocalObjectStore)
    assert store.root == tmp_path / "objects"
    store.put_bytes("x", b"1")
    assert (tmp_path / "objects" / "x").read_bytes() == b"1"
