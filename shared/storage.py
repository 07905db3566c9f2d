"""Object store: a local directory or an S3 bucket behind one interface."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from shared.outages import STORAGE, retry_through_outage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from shared.config import Settings

T = TypeVar("T")

MIB = 1024 * 1024
S3_MIN_PART_BYTES = 5 * MIB
READ_CHUNK_BYTES = 1 << 16
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_TMP_PREFIX = ".tmp-"
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


@dataclass(frozen=True)
class PresignedUpload:
    """A URL (plus form fields for POST) that lets a client upload one object directly."""

    url: str
    method: str
    fields: dict[str, str]
    max_bytes: int
    expires_in: int


class ObjectTooLarge(Exception):
    """Raised when more bytes arrive than the caller allowed."""


class ObjectNotFound(Exception):
    """Raised when the key does not exist."""


def _validate_key(key: str, *, allow_prefix: bool = False) -> str:
    """Reject keys that could escape the store root or mean different things per backend."""
    if not key:
        if allow_prefix:
            return key
        raise ValueError("object key must not be empty")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    parts = key.split("/")
    if allow_prefix and parts[-1] == "":
        parts = parts[:-1]
    for part in parts:
        if part in ("", ".", "..") or part.startswith(_TMP_PREFIX):
            raise ValueError(f"invalid object key {key!r}")
    return key


def validate_part(part: str) -> str:
    """One path segment of a key: non-empty, no separators, no traversal."""
    if part in ("", ".", "..") or part.startswith(_TMP_PREFIX) or any(c in part for c in "/\\\x00"):
        raise ValueError(f"invalid key part {part!r}")
    return part


def tenant_key(tenant_id: str, *parts: str) -> str:
    """The key `tenants/{tenant_id}/{parts...}`, every segment validated."""
    segments = [validate_part(tenant_id), *(validate_part(p) for p in parts)]
    return "/".join(["tenants", *segments])


def _iter_chunks(stream: BinaryIO | Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Chunks of a file-like object or an iterable of bytes, skipping empty ones."""
    read = getattr(stream, "read", None)
    if callable(read):
        while chunk := read(chunk_size):
            yield chunk
    else:
        for chunk in stream:
            if chunk:
                yield bytes(chunk)


class ObjectStore(ABC):
    """Keys are `/`-separated strings; values are opaque bytes."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> int:
        """Store `data` under `key`; returns its size."""

    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> int:
        """Store the file at `path` under `key`; returns its size."""

    @abstractmethod
    def put_stream(
        self,
        key: str,
        stream: BinaryIO | Iterable[bytes],
        content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> int:
        """Store a stream without holding it in memory; ObjectTooLarge past `max_bytes`."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object."""

    @abstractmethod
    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 16
    ) -> Iterator[bytes]:
        """Stream bytes `start`..`end` inclusive (`end` None: to the end of the object)."""

    @abstractmethod
    def download(self, key: str, path: Path) -> None:
        """Copy the object to the local file `path`."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; ObjectNotFound when missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the key exists."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the key; no error when it is missing."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; returns how many."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted."""

    @abstractmethod
    def presign_get(self, key: str, expires_in: int) -> str | None:
        """A time-limited download URL, or None when the API must serve the object."""

    @abstractmethod
    def presign_upload(
        self, key: str, max_bytes: int, expires_in: int, content_type: str | None = None
    ) -> PresignedUpload | None:
        """A time-limited, size-limited direct upload, or None when unsupported."""

    @abstractmethod
    def ping(self) -> None:
        """Raise when the store cannot be reached."""


def _check_range(start: int, end: int | None) -> None:
    """Reject ranges that cannot mean anything."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range {start}-{end}")


class LocalObjectStore(ObjectStore):
    """Objects as files under one root directory (embedded mode)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _validate_key(key)

    @staticmethod
    def _make_temp(directory: Path) -> tuple[int, str]:
        """A new temp file in `directory`, creating the directory as needed."""
        for _ in range(3):
            directory.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)
            except FileNotFoundError:
                # a concurrent delete pruned the now-empty directory: make it again
                continue
        return tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)

    @contextlib.contextmanager
    def _atomic_target(self, final: Path) -> Iterator[BinaryIO]:
        """A temp file next to `final`, moved into place only if the block succeeds."""
        fd, tmp_name = self._make_temp(final.parent)
        try:
            with os.fdopen(fd, "wb") as tmp:
                yield tmp
            os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> int:
        """Store `data` under `key`; returns its size."""
        with self._atomic_target(self._path(key)) as out:
            out.write(data)
        return len(data)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> int:
        """Store the file at `path` under `key`; returns its size."""
        with self._atomic_target(self._path(key)) as out, Path(path).open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            return out.tell()

    def put_stream(
        self,
        key: str,
        stream: BinaryIO | Iterable[bytes],
        content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> int:
        """Store a stream without holding it in memory; ObjectTooLarge past `max_bytes`."""
        written = 0
        with self._atomic_target(self._path(key)) as out:
            for chunk in _iter_chunks(stream, READ_CHUNK_BYTES):
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:
                    raise ObjectTooLarge(f"{key}: more than {max_bytes} bytes")
                out.write(chunk)
        return written

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 16
    ) -> Iterator[bytes]:
        """Stream bytes `start`..`end` inclusive (`end` None: to the end of the object)."""
        _check_range(start, end)
        try:
            # opened here, not in the generator, so a missing key fails at the call
            handle = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        return self._read_range(handle, start, end, chunk_size)

    @staticmethod
    def _read_range(
        handle: BinaryIO, start: int, end: int | None, chunk_size: int
    ) -> Iterator[bytes]:
        with handle:
            handle.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = handle.read(want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def download(self, key: str, path: Path) -> None:
        """Copy the object to the local file `path`."""
        try:
            source = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        with source, self._atomic_target(Path(path)) as out:
            shutil.copyfileobj(source, out, 1 << 20)

    def size(self, key: str) -> int:
        """Size in bytes; ObjectNotFound when missing."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        """Whether the key exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Delete the key; no error when it is missing."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
        self._prune_dirs(path.parent)

    def _prune_dirs(self, directory: Path) -> None:
        """Remove now-empty parent directories up to (not including) the root."""
        root = self.root
        while directory != root and root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; returns how many."""
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted."""
        _validate_key(prefix, allow_prefix=True)
        # only walk the deepest directory the prefix fully names
        base = self.root / prefix.rpartition("/")[0]
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def presign_get(self, key: str, expires_in: int) -> str | None:
        """None: the API serves local objects itself."""
        _validate_key(key)
        return None

    def presign_upload(
        self, key: str, max_bytes: int, expires_in: int, content_type: str | None = None
    ) -> PresignedUpload | None:
        """None: clients upload through the API in local mode."""
        _validate_key(key)
        return None

    def ping(self) -> None:
        """Raise when the root directory is missing or not writable."""
        if not self.root.is_dir():
            raise OSError(f"object store root {self.root} is not a directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(f"object store root {self.root} is not writable")


def _error_code(exc: ClientError) -> str:
    """The S3 error code, or the HTTP status when the body had none (HEAD requests)."""
    error = exc.response.get("Error", {})
    code = error.get("Code")
    if code:
        return str(code)
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


@contextlib.contextmanager
def _missing_as_not_found(key: str) -> Iterator[None]:
    """Turn S3's several spellings of "no such object" into ObjectNotFound."""
    try:
        yield
    except ClientError as exc:
        if _error_code(exc) in _NOT_FOUND_CODES:
            raise ObjectNotFound(key) from None
        raise


class S3ObjectStore(ObjectStore):
    """Objects in one S3 bucket (MinIO, SeaweedFS or AWS), path-style, signature v4."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key: str,
        secret_key: str,
        multipart_threshold: int = 8 * MIB,
        retry_s: float = 0.0,
        backoff_s: float = 0.5,
    ) -> None:
        if multipart_threshold < S3_MIN_PART_BYTES:
            raise ValueError(f"multipart_threshold must be at least {S3_MIN_PART_BYTES} bytes")
        self.bucket = bucket
        self.region = region
        self.multipart_threshold = multipart_threshold
        # How long a call rides through an unreachable store before StorageUnavailable.
        self.retry_s = retry_s
        self.backoff_s = backoff_s
        self._client_args = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
        }
        self.client: S3Client = self._make_client(
            Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            )
        )
        # readiness probes must answer quickly: no retries, short timeouts
        self._ping_client: S3Client = self._make_client(
            Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=2,
                read_timeout=5,
            )
        )
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_threshold,
            max_concurrency=4,
        )
        self.ensure_bucket()

    def _make_client(self, config: Config) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self._client_args["endpoint_url"],
            region_name=self._client_args["region_name"],
            aws_access_key_id=self._client_args["aws_access_key_id"],
            aws_secret_access_key=self._client_args["aws_secret_access_key"],
            config=config,
        )

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """`call`, retried while the store is unreachable for up to `retry_s` seconds.

        Every call retried here is idempotent: a whole-object PUT, a GET into a temp file
        renamed on success, a HEAD, a LIST or a DELETE.
        """
        if self.retry_s <= 0:
            return call()
        return retry_through_outage(
            call, self.retry_s, self.backoff_s, only=frozenset({STORAGE}), what=what
        )

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists."""
        self._retry("ensure bucket", self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND_CODES:
                raise
        try:
            if self.region == "us-east-1":
                self.client.create_bucket(Bucket=self.bucket)
            else:
                self.client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.region},  # type: ignore[typeddict-item]
                )
        except ClientError as exc:
            # another process may have created it between our HEAD and CREATE
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> int:
        """Store `data` under `key`; returns its size."""
        _validate_key(key)
        self._retry(
            f"put {key}",
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type or DEFAULT_CONTENT_TYPE,
            ),
        )
        return len(data)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> int:
        """Store the file at `path` under `key` (multipart above the threshold)."""
        size = Path(path).stat().st_size
        _validate_key(key)
        self._retry(
            f"put {key}",
            lambda: self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type or DEFAULT_CONTENT_TYPE},
                Config=self.transfer_config,
            ),
        )
        return size

    def put_stream(
        self,
        key: str,
        stream: BinaryIO | Iterable[bytes],
        content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> int:
        """Store a stream holding at most one part in memory; ObjectTooLarge past `max_bytes`."""
        _validate_key(key)
        part_size = self.multipart_threshold
        buffer = bytearray()
        written = 0
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []
        try:
            for chunk in _iter_chunks(stream, READ_CHUNK_BYTES):
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:
                    raise ObjectTooLarge(f"{key}: more than {max_bytes} bytes")
                buffer += chunk
                while len(buffer) >= part_size:
                    if upload_id is None:
                        upload_id = self.client.create_multipart_upload(
                            Bucket=self.bucket,
                            Key=key,
                            ContentType=content_type or DEFAULT_CONTENT_TYPE,
                        )["UploadId"]
                    parts.append(
                        self._upload_part(key, upload_id, len(parts) + 1, buffer, part_size)
                    )
                    del buffer[:part_size]
            if upload_id is None:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=bytes(buffer),
                    ContentType=content_type or DEFAULT_CONTENT_TYPE,
                )
                return written
            if buffer:
                parts.append(self._upload_part(key, upload_id, len(parts) + 1, buffer, len(buffer)))
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
            return written
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            raise

    def _upload_part(
        self, key: str, upload_id: str, number: int, buffer: bytearray, length: int
    ) -> CompletedPartTypeDef:
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=bytes(buffer[:length]),
        )
        return {"ETag": response["ETag"], "PartNumber": number}

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        _validate_key(key)

        def read() -> bytes:
            with _missing_as_not_found(key):
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                return body.read()

        return self._retry(f"get {key}", read)

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 16
    ) -> Iterator[bytes]:
        """Stream bytes `start`..`end` inclusive (`end` None: to the end of the object)."""
        _check_range(start, end)
        byte_range = f"bytes={start}-{'' if end is None else end}"
        try:
            # requested here, not in the generator, so a missing key fails at the call
            response = self.client.get_object(
                Bucket=self.bucket, Key=_validate_key(key), Range=byte_range
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            if code in ("InvalidRange", "416"):
                return iter(())
            raise
        return self._read_body(response["Body"], chunk_size)

    @staticmethod
    def _read_body(body: StreamingBody, chunk_size: int) -> Iterator[bytes]:
        with contextlib.closing(body):
            yield from body.iter_chunks(chunk_size)

    def download(self, key: str, path: Path) -> None:
        """Copy the object to the local file `path` (ranged parallel GETs when large)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _validate_key(key)

        def fetch() -> None:
            with _missing_as_not_found(key):
                self.client.download_file(
                    self.bucket, key, str(target), Config=self.transfer_config
                )

        self._retry(f"get {key}", fetch)

    def size(self, key: str) -> int:
        """Size in bytes; ObjectNotFound when missing."""
        _validate_key(key)

        def head() -> int:
            with _missing_as_not_found(key):
                return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]

        return self._retry(f"head {key}", head)

    def exists(self, key: str) -> bool:
        """Whether the key exists."""
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Delete the key; no error when it is missing."""
        _validate_key(key)
        self._retry(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`, abort its pending uploads; returns the count."""
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise RuntimeError(
                    f"could not delete {len(errors)} objects, e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )
        self._abort_uploads(prefix)
        return len(keys)

    def _abort_uploads(self, prefix: str) -> None:
        """Abort unfinished multipart uploads under `prefix` so no parts linger."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                with contextlib.suppress(ClientError):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )

    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted."""
        _validate_key(prefix, allow_prefix=True)

        def listing() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            return sorted(keys)

        return self._retry(f"list {prefix}", listing)

    def presign_get(self, key: str, expires_in: int) -> str | None:
        """A presigned GET URL valid for `expires_in` seconds."""
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": _validate_key(key)},
            ExpiresIn=expires_in,
        )

    def presign_upload(
        self, key: str, max_bytes: int, expires_in: int, content_type: str | None = None
    ) -> PresignedUpload | None:
        """A presigned POST whose policy caps the size, so the store itself refuses more."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        fields: dict[str, str] = {}
        conditions: list[object] = [["content-length-range", 1, max_bytes]]
        if content_type:
            fields["Content-Type"] = content_type
            conditions.append({"Content-Type": content_type})
        post = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=_validate_key(key),
            Fields=fields,
            Conditions=conditions,
            ExpiresIn=expires_in,
        )
        return PresignedUpload(
            url=post["url"],
            method="POST",
            fields={str(k): str(v) for k, v in post["fields"].items()},
            max_bytes=max_bytes,
            expires_in=expires_in,
        )

    def ping(self) -> None:
        """Raise when the bucket cannot be reached with these credentials."""
        self._ping_client.head_bucket(Bucket=self.bucket)


def build_store(settings: Settings, retry_s: float | None = None) -> ObjectStore:
    """The object store the settings describe; `retry_s` overrides TH_STORAGE_RETRY_S."""
    if settings.storage_backend == "s3":
        return S3ObjectStore(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key or "",
            secret_key=settings.s3_secret_key or "",
            multipart_threshold=settings.s3_multipart_threshold,
            retry_s=settings.storage_retry_s if retry_s is None else retry_s,
            backoff_s=settings.outage_backoff_s,
        )
    return LocalObjectStore(settings.local_storage_dir)


__all__ = [
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "PresignedUpload",
    "S3ObjectStore",
    "build_store",
    "tenant_key",
    "validate_part",
]
