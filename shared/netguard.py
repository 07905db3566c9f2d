"""Refuse webhook targets on private, loopback or link-local networks (SSRF guard)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class ForbiddenTarget(ValueError):
    """The URL is malformed or resolves to an address callbacks may not reach."""


def _is_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


def check_callback_url(url: str, allow_private: bool = False) -> None:
    """Raise ForbiddenTarget unless `url` is http(s) and every address it resolves to is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ForbiddenTarget("callback_url must be an absolute http or https URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise ForbiddenTarget("callback_url has an invalid port") from exc
    if parts.username or parts.password:
        raise ForbiddenTarget("callback_url must not carry credentials")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ForbiddenTarget(f"callback_url host {parts.hostname!r} does not resolve") from exc
    if allow_private:
        return
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not _is_public(addr):
            raise ForbiddenTarget(f"callback_url resolves to a non-public address ({addr})")
