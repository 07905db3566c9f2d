"""A small typed client of the talkinghead REST API (v1), used by the CLI, the demo and tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import httpx

JobKind = Literal["avatar", "render"]
SourceKind = Literal["video", "image"]
ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a file moves."""

TERMINAL_STATUSES = frozenset({"ready", "done", "failed", "cancelled"})
_CHUNK = 256 * 1024


class ApiError(Exception):
    """An error answer of the API (problem+json), or an API that cannot be reached (status 0)."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.status = status
        self.code = code
        self.detail = detail


class _ProgressReader:
    """A binary file wrapper that reports how much of it httpx has read."""

    def __init__(self, file: IO[bytes], total: int, callback: ProgressCallback | None) -> None:
        self._file = file
        self._total = total
        self._callback = callback
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._sent += len(chunk)
        if self._callback is not None and chunk:
            self._callback(self._sent, self._total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        pos = self._file.seek(offset, whence)
        if whence == os.SEEK_SET:
            self._sent = pos  # httpx rewinds before (re)sending the body
        return pos

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


def source_kind(path: str | os.PathLike[str]) -> SourceKind:
    """`image` for a JPEG, PNG or WebP file (by its first bytes, not its name), else `video`."""
    with Path(path).open("rb") as fh:
        head = fh.read(12)
    photo = head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )
    return "image" if photo else "video"


def _kind_path(kind: str) -> str:
    """`avatar`/`avatars` -> `avatars`, `render`/`renders` -> `renders`."""
    plural = kind if kind.endswith("s") else kind + "s"
    if plural not in ("avatars", "renders"):
        raise ValueError(f"unknown resource kind {kind!r}; expected 'avatar' or 'render'")
    return plural


def _error_from_response(response: httpx.Response) -> ApiError:
    """Turn an error answer into an ApiError, reading problem+json when the API sent it."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") or body.get("title") or f"http_{status}"
        detail = body.get("detail", "")
        if not isinstance(detail, str):  # e.g. FastAPI's list of validation errors
            detail = json.dumps(detail, separators=(",", ":"))
        return ApiError(status, str(code), detail)
    text = response.text.strip().replace("\n", " ")
    return ApiError(status, f"http_{status}", text[:300] or response.reason_phrase)


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Parse Server-Sent Events from text lines; yields (event name, data) per dispatched event."""
    event = ""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):  # comment / keep-alive
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        # `id:` and `retry:` are not needed: a reconnect starts from the current state.
    if data:
        yield event or "message", "\n".join(data)


RETRIES = 3  # times a GET or DELETE answered 429/503 with Retry-After is sent again
MAX_RETRY_WAIT_S = 10.0  # longer waits are the caller's decision: the error is raised
_RETRYABLE_METHODS = frozenset({"GET", "HEAD", "DELETE"})


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before sending again, when a 429/503 says so and it is short enough."""
    if response.status_code not in (429, 503):
        return None
    try:
        wait = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return wait if 0 <= wait <= MAX_RETRY_WAIT_S else None


class TalkingHeadClient:
    """Blocking client of one talkinghead API; every call returns plain JSON dicts."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "talkinghead-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> TalkingHeadClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ApiError(0, "unreachable", f"cannot reach {self.base_url}: {exc}") from exc
            wait = _retry_after(response) if method in _RETRYABLE_METHODS else None
            if wait is None or attempt >= RETRIES:
                break
            # A rate limit or a brief outage: the server says when to come back. Requests
            # with a body (uploads) are not re-sent: their stream has been read.
            attempt += 1
            time.sleep(wait)
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _iter_pages(self, path: str, limit: int | None) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {}
            if limit is not None:
                params["limit"] = limit
            if cursor:
                params["cursor"] = cursor
            page = self._json("GET", path, params=params)
            if isinstance(page, list):  # an unpaginated listing
                yield from page
                return
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _upload(
        self,
        path: str,
        field: str,
        file_path: str | os.PathLike[str],
        form: dict[str, str],
        headers: dict[str, str],
        on_progress: ProgressCallback | None,
    ) -> dict[str, Any]:
        """POST a multipart form whose file part is streamed from disk."""
        source = Path(file_path)
        total = source.stat().st_size
        with source.open("rb") as fh:
            reader = _ProgressReader(fh, total, on_progress)
            files = {field: (source.name, reader, "application/octet-stream")}
            # Uploads may be slow; only the connect phase keeps the short timeout.
            timeout = httpx.Timeout(None, connect=self.timeout)
            result: dict[str, Any] = self._json(
                "POST", path, data=form, files=files, headers=headers, timeout=timeout
            )
        return result

    # -- avatars ----------------------------------------------------------------------------

    def create_avatar(
        self,
        source_path: str | os.PathLike[str],
        *,
        consent: bool,
        source: SourceKind | None = None,
        name: str | None = None,
        renderer: str | None = None,
        preset: str | None = None,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        on_upload_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Upload a portrait video or photo and start building an avatar (`202`, `queued`).

        `source` says which the file is; by default a JPEG, PNG or WebP file goes as the photo
        (`image` part) and anything else as the video.
        """
        kind = source or source_kind(source_path)
        if kind not in ("video", "image"):
            raise ValueError(f"source must be 'video' or 'image', not {kind!r}")
        form = {"consent": "true" if consent else "false"}
        optional = {
            "name": name,
            "renderer": renderer,
            "preset": preset,
            "callback_url": callback_url,
        }
        form.update({k: v for k, v in optional.items() if v is not None})
        if metadata is not None:
            form["metadata"] = json.dumps(metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._upload("/v1/avatars", kind, source_path, form, headers, on_upload_progress)

    def get_avatar(self, avatar_id: str) -> dict[str, Any]:
        """One avatar with its status, stage, progress, error and metrics."""
        result: dict[str, Any] = self._json("GET", f"/v1/avatars/{avatar_id}")
        return result

    def list_avatars(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every avatar of the tenant, newest first, fetching pages of `limit` as needed."""
        return self._iter_pages("/v1/avatars", limit)

    def delete_avatar(self, avatar_id: str) -> None:
        """Cancel the avatar's work and delete it with its objects."""
        self._request("DELETE", f"/v1/avatars/{avatar_id}")

    # -- renders ----------------------------------------------------------------------------

    def create_render(
        self,
        avatar_id: str,
        audio_path: str | os.PathLike[str],
        *,
        options: dict[str, Any] | None = None,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        on_upload_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Upload speech audio and start rendering a talking video of a `ready` avatar."""
        form: dict[str, str] = {}
        if options:
            form["options"] = json.dumps(options)
        if callback_url is not None:
            form["callback_url"] = callback_url
        if metadata is not None:
            form["metadata"] = json.dumps(metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._upload(
            f"/v1/avatars/{avatar_id}/renders", "audio", audio_path, form, headers,
            on_upload_progress,
        )  # fmt: skip

    def get_render(self, render_id: str) -> dict[str, Any]:
        """One render with its status, progress and `video_url` once done."""
        result: dict[str, Any] = self._json("GET", f"/v1/renders/{render_id}")
        return result

    def delete_render(self, render_id: str) -> None:
        """Cancel a render and delete its video."""
        self._request("DELETE", f"/v1/renders/{render_id}")

    def download_video(
        self,
        render_id: str,
        dest: str | os.PathLike[str],
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream the finished mp4 to `dest` (written to a `.part` file, then renamed)."""
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 120.0))
        try:
            with self._http.stream(
                "GET", f"/v1/renders/{render_id}/video", follow_redirects=True, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from_response(response)
                total = int(response.headers.get("content-length") or 0)
                done = 0
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if on_progress is not None:
                            on_progress(done, total or done)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ApiError(0, "unreachable", f"download failed: {exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return target

    # -- events -----------------------------------------------------------------------------

    def get(self, kind: JobKind | str, resource_id: str) -> dict[str, Any]:
        """An avatar or a render by kind."""
        result: dict[str, Any] = self._json("GET", f"/v1/{_kind_path(kind)}/{resource_id}")
        return result

    def follow_events(
        self, kind: JobKind | str, resource_id: str, read_timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield each state event (a JobEvent dict) of one stream until the server ends it."""
        path = f"/v1/{_kind_path(kind)}/{resource_id}/events"
        # Events may be minutes apart while a stage runs: by default no read timeout.
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        try:
            with self._http.stream(
                "GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from_response(response)
                for event, data in iter_sse(response.iter_lines()):
                    if event not in ("state", "message"):
                        continue
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(payload, dict):
                        yield payload
                        if payload.get("status") in TERMINAL_STATUSES:
                            return
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"event stream lost: {exc}") from exc

    def wait(
        self,
        kind: JobKind | str,
        resource_id: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follow events until the resource is terminal; returns the final resource.

        A dropped stream is reopened (the server starts each stream with the current state),
        so a restarted API or a proxy's idle cut does not end the wait early.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = 0.5
        while True:
            remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
            try:
                for event in self.follow_events(kind, resource_id, read_timeout=remaining):
                    backoff = 0.5
                    if on_event is not None:
                        on_event(event)
                    if event.get("status") in TERMINAL_STATUSES:
                        return self.get(kind, resource_id)
            except ApiError as exc:
                if exc.status != 0:
                    raise
            current = self.get(kind, resource_id)
            if current.get("status") in TERMINAL_STATUSES:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise ApiError(0, "timeout", f"{resource_id} still {current.get('status')}")
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    # -- keys -------------------------------------------------------------------------------

    def create_key(self, name: str = "") -> dict[str, Any]:
        """A new API key of the caller's tenant; its `key` is shown only this once."""
        result: dict[str, Any] = self._json("POST", "/v1/keys", json={"name": name})
        return result

    def list_keys(self) -> list[dict[str, Any]]:
        """The tenant's keys, without their secrets."""
        return list(self._iter_pages("/v1/keys", None))

    def revoke_key(self, key_id: str) -> None:
        """Revoke one of the tenant's keys."""
        self._request("DELETE", f"/v1/keys/{key_id}")

    # -- probes -----------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when `/readyz` answers 200."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False
