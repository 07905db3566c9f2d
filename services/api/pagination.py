"""Opaque keyset cursors: `(created_at, id)` of the last item of a page."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone

from services.api.errors import ApiError


def encode_cursor(created_at: datetime, resource_id: str) -> str:
    """The cursor that continues after the item (`created_at`, `resource_id`)."""
    raw = f"{created_at.astimezone(timezone.utc).isoformat()}|{resource_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of `encode_cursor`; 422 `validation_error` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, resource_id = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(422, "validation_error", "cursor: not a cursor this API returned") from None
    if created_at.tzinfo is None or not resource_id or len(resource_id) > 40:
        raise ApiError(422, "validation_error", "cursor: not a cursor this API returned")
    return created_at.astimezone(timezone.utc), resource_id
