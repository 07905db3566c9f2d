"""A pull-based multipart/form-data reader: small fields in memory, the one file part streamed.

The request body arrives as an iterator of chunks; the file part is handed to a consumer (the
object store's `put_stream`) as another iterator, so at most one body chunk is held at a time
and nothing is spooled to disk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from services.api.errors import ApiError

FORM_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers
# Event tags produced by the parser callbacks.
_PART, _DATA, _END, _DONE = "part", "data", "end", "done"


@dataclass(frozen=True)
class FormSpec:
    """The fields a form may carry: one streamed file and text fields with size caps."""

    file_fields: tuple[str, ...]  # the names the one file part may have (alternatives)
    field_limits: Mapping[str, int]
    too_large_codes: Mapping[str, str]  # field -> problem code when it exceeds its cap
    second_file_code: str = "validation_error"  # problem code when a second file part comes

    @property
    def max_extra_bytes(self) -> int:
        """The most a body may carry besides the file: every field full, plus framing."""
        return sum(self.field_limits.values()) + FORM_OVERHEAD_BYTES


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type; 422 when missing."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(422, "validation_error", "multipart body without a valid boundary")
    return boundary


def _malformed(detail: str = "malformed multipart body") -> ApiError:
    return ApiError(422, "validation_error", detail)


class StreamingForm:
    """Reads one multipart body; `read()` streams the file part into a consumer."""

    def __init__(self, body: Iterable[bytes], boundary: bytes, spec: FormSpec) -> None:
        self.spec = spec
        self.fields: dict[str, str] = {}
        self.file_seen = False
        self._body = iter(body)
        self._events: deque[tuple[str, bytes]] = deque()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._on_part_begin,
                    "on_part_data": self._on_part_data,
                    "on_part_end": lambda: self._events.append((_END, b"")),
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_end": lambda: self._events.append((_DONE, b"")),
                },
            )
        except (FormParserError, ValueError) as exc:
            raise _malformed(f"malformed multipart body: {exc}") from None

    # -- parser callbacks --------------------------------------------------------------
    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append((_DATA, bytes(data[start:end])))

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise _malformed("a multipart part has no Content-Disposition name")
        self._events.append((_PART, name))

    # -- driving -----------------------------------------------------------------------
    def _next_event(self) -> tuple[str, bytes]:
        while not self._events:
            chunk = next(self._body, None)
            try:
                if chunk is None:
                    self._parser.finalize()
                    if not self._events:
                        raise _malformed("the multipart body ended early")
                    break
                self._parser.write(chunk)
            except FormParserError as exc:
                raise _malformed(f"malformed multipart body: {exc}") from None
        return self._events.popleft()

    def _file_data(self) -> Iterator[bytes]:
        while True:
            tag, data = self._next_event()
            if tag == _DATA:
                if data:
                    yield data
            elif tag == _END:
                return
            else:
                raise _malformed()

    def _field_value(self, name: str) -> str:
        limit = self.spec.field_limits[name]
        buf = bytearray()
        for chunk in self._file_data():
            buf += chunk
            if len(buf) > limit:
                code = self.spec.too_large_codes.get(name, "validation_error")
                raise ApiError(422, code, f"form field {name!r} exceeds {limit} bytes")
        try:
            return buf.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "validation_error", f"form field {name!r} is not UTF-8") from None

    def read(
        self,
        before_file: Callable[[str, Mapping[str, str]], object],
        consume_file: Callable[[str, Iterator[bytes]], None],
    ) -> dict[str, str]:
        """Parse the body: text fields into `fields`, the file part through `consume_file`.

        Both callbacks get the file part's name first. `before_file` sees the fields that came
        before the file, so it can refuse the request before any byte of the file is stored.
        """
        while True:
            tag, data = self._next_event()
            if tag == _DONE:
                return self.fields
            if tag != _PART:
                raise _malformed()
            name = data.decode("utf-8", "replace")
            if name in self.spec.file_fields:
                if self.file_seen:
                    raise ApiError(
                        422,
                        self.spec.second_file_code,
                        f"more than one file part; send one of {', '.join(self.spec.file_fields)}",
                    )
                self.file_seen = True
                before_file(name, self.fields)
                stream = self._file_data()
                consume_file(name, stream)
                for _ in stream:  # a consumer that stopped early still leaves a parsable body
                    pass
            elif name in self.spec.field_limits:
                if name in self.fields:
                    raise ApiError(422, "validation_error", f"form field {name!r} given twice")
                self.fields[name] = self._field_value(name)
            else:
                raise ApiError(422, "unknown_field", f"unknown form field {name[:100]!r}")
