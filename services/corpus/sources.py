"""Corpus sources: list a directory, glob, CSV or S3 prefix as tagged files; fetch one file.

A source file is named by a URI that every worker can resolve: `file:///abs/path` (the
embedded mode, or a volume every worker mounts) or `s3://bucket/key` (the store's endpoint and
credentials; `store://key` is the configured bucket).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from shared.config import Settings
from shared.storage import ObjectNotFound, ObjectStore, S3ObjectStore, build_store

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
CSV_COLUMNS = ("path", "identity", "speaker", "language", "licence")
MAX_SOURCES = 200_000


class SourceError(ValueError):
    """The SOURCE cannot be listed; the message says why."""


@dataclass(frozen=True)
class SourceEntry:
    """One file of a corpus source with the operator's tags."""

    uri: str
    identity: str
    speaker: str
    language: str
    licence: str


@dataclass(frozen=True)
class SourceDefaults:
    """Tags for files the source does not tag itself."""

    language: str = "und"
    licence: str = "unspecified"


def _file_uri(path: Path) -> str:
    return path.resolve().as_uri()


def _identity_of(path: PurePosixPath, root: PurePosixPath | None) -> str:
    """A file's identity when untagged: its folder below the root, else its file stem."""
    rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else path
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def _entry(uri: str, identity: str, defaults: SourceDefaults, row: dict[str, str]) -> SourceEntry:
    ident = (row.get("identity") or identity).strip()
    if not ident:
        raise SourceError(f"{uri}: no identity")
    return SourceEntry(
        uri=uri,
        identity=ident,
        speaker=(row.get("speaker") or ident).strip(),
        language=(row.get("language") or defaults.language).strip() or defaults.language,
        licence=(row.get("licence") or defaults.licence).strip() or defaults.licence,
    )


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIXES)


def _from_csv(text: str, base: str, defaults: SourceDefaults) -> list[SourceEntry]:
    """Rows of a CSV with a `path` column; relative paths are relative to the CSV."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise SourceError(f"the CSV needs a header with at least 'path' ({', '.join(CSV_COLUMNS)})")
    out = []
    for line, row in enumerate(reader, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise SourceError(f"CSV line {line}: empty path")
        if "://" in raw:
            uri = raw
        elif base.startswith("file://"):
            uri = _file_uri(Path(unquote(urlparse(base).path)) / raw)
        else:
            uri = base.rstrip("/") + "/" + raw
        out.append(_entry(uri, PurePosixPath(raw).stem, defaults, row))
    return out


def _s3_parts(uri: str, settings: Settings) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme == "store":
        return settings.s3_bucket, (parsed.netloc + parsed.path).lstrip("/")
    return parsed.netloc, parsed.path.lstrip("/")


def store_for(uri: str, settings: Settings) -> tuple[ObjectStore, str]:
    """The object store holding an s3:// or store:// URI, and the key inside it."""
    bucket, key = _s3_parts(uri, settings)
    if urlparse(uri).scheme == "store" or bucket == settings.s3_bucket:
        return build_store(settings), key
    if settings.storage_backend != "s3":
        raise SourceError(f"{uri}: S3 sources need TH_STORAGE_BACKEND=s3 (endpoint, keys)")
    return (
        S3ObjectStore(
            bucket=bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key or "",
            secret_key=settings.s3_secret_key or "",
        ),
        key,
    )


def list_source(source: str, settings: Settings, defaults: SourceDefaults) -> list[SourceEntry]:
    """Every video file of SOURCE, tagged; raises SourceError for what cannot be listed."""
    entries: list[SourceEntry]
    if source.startswith(("s3://", "store://")):
        store, key = store_for(source, settings)
        scheme_root = source[: len(source) - len(key)] if key else source.rstrip("/") + "/"
        if key.lower().endswith(".csv"):
            try:
                text = store.get_bytes(key).decode("utf-8-sig")
            except ObjectNotFound:
                raise SourceError(f"{source}: no such object") from None
            base = scheme_root + str(PurePosixPath(key).parent)
            entries = _from_csv(text, base, defaults)
        else:
            prefix = key.rstrip("/") + "/" if key else ""
            names = [k for k in store.list(prefix) if _is_video(k)]
            store_root = PurePosixPath(prefix) if prefix else None
            entries = [
                _entry(scheme_root + k, _identity_of(PurePosixPath(k), store_root), defaults, {})
                for k in sorted(names)
            ]
    elif source.lower().endswith(".csv"):
        path = Path(source)
        if not path.is_file():
            raise SourceError(f"{source}: no such CSV file")
        entries = _from_csv(path.read_text("utf-8-sig"), _file_uri(path.parent), defaults)
    elif Path(source).is_dir():
        root = Path(source).resolve()
        files = sorted(p for p in root.rglob("*") if p.is_file() and _is_video(p.name))
        entries = [
            _entry(_file_uri(p), _identity_of(PurePosixPath(p), PurePosixPath(root)), defaults, {})
            for p in files
        ]
    else:
        files = sorted(Path(p) for p in glob.glob(source, recursive=True))
        files = [p for p in files if p.is_file()]
        if not files and not any(ch in source for ch in "*?["):
            raise SourceError(f"{source}: no such file, directory, CSV or S3 prefix")
        entries = [_entry(_file_uri(p), _identity_of(PurePosixPath(p), None), defaults, {})
                   for p in files]  # fmt: skip
    if not entries:
        raise SourceError(f"{source}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    if len(entries) > MAX_SOURCES:
        raise SourceError(f"{source}: {len(entries)} files, more than {MAX_SOURCES}")
    seen: set[str] = set()
    unique = []
    for entry in entries:  # a CSV may list a file twice; its first row's tags win
        if entry.uri not in seen:
            seen.add(entry.uri)
            unique.append(entry)
    return unique


def fetch(uri: str, dest: Path, settings: Settings) -> str:
    """Copy the file behind `uri` to `dest` and return its SHA-256 (hex)."""
    digest = hashlib.sha256()
    scheme = urlparse(uri).scheme
    if scheme == "file":
        src = Path(unquote(urlparse(uri).path))
        if not src.is_file():
            raise FileNotFoundError(f"{uri} does not exist")
        with src.open("rb") as fin, dest.open("wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                digest.update(chunk)
                fout.write(chunk)
        return digest.hexdigest()
    if scheme in ("s3", "store"):
        store, key = store_for(uri, settings)
        try:
            store.download(key, dest)
        except ObjectNotFound:
            raise FileNotFoundError(f"{uri} does not exist") from None
        with dest.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    raise SourceError(f"{uri}: unsupported scheme {scheme!r}")
