"""The registry of shared-model kinds: the built-in ones and those of installed packages.

An operator's package adds a kind without editing this repository by declaring an entry point
in the `talkinghead.shared_models` group whose object satisfies `SharedModelKind`:

    [project.entry-points."talkinghead.shared_models"]
    mykind = "my_package.models:KIND"
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import entry_points
from pkgutil import resolve_name

from talkinghead.sharedmodels.contract import SharedModelError, SharedModelKind

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "talkinghead.shared_models"
# Built-ins, loaded lazily: naming a kind imports nothing heavy.
BUILTIN = {
    "audio2mouth": "talkinghead.sharedmodels.audio2mouth:KIND",
}

_lock = threading.Lock()
_kinds: dict[str, SharedModelKind] | None = None


def check_kind(name: str, kind: object) -> SharedModelKind:
    """`kind` if it satisfies the contract under `name`; ValueError saying what is wrong."""
    if not isinstance(kind, SharedModelKind):
        raise ValueError(f"shared model kind {name!r} does not implement SharedModelKind")
    if kind.name != name:
        raise ValueError(f"entry point {name!r} holds a kind named {kind.name!r}")
    if not isinstance(kind.family, str):
        raise ValueError(f"shared model kind {name!r}: family must be a string ('' for any)")
    return kind


def _discover() -> dict[str, SharedModelKind]:
    found = {name: check_kind(name, resolve_name(target)) for name, target in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            continue  # the project's own entry points name the built-ins again
        try:
            found[ep.name] = check_kind(ep.name, ep.load())
        except Exception:
            # One broken package must not take the other kinds down with it; the operator
            # sees why in the log, and asking for that kind fails `unknown_model_kind`.
            log.exception("shared model kind %r (%s) cannot be loaded", ep.name, ep.value)
    return found


def kinds() -> dict[str, SharedModelKind]:
    """Every registered kind by name, built-ins first (loaded once per process)."""
    global _kinds
    with _lock:
        if _kinds is None:
            _kinds = _discover()
        return dict(_kinds)


def reload() -> dict[str, SharedModelKind]:
    """Discover the kinds again (after installing a package at run time; tests)."""
    global _kinds
    with _lock:
        _kinds = None
    return kinds()


def get_kind(name: str) -> SharedModelKind:
    """The kind called `name`; SharedModelError("unknown_model_kind") names the registered ones."""
    found = kinds()
    if name not in found:
        choices = sorted(found)
        raise SharedModelError(
            "unknown_model_kind", f"unknown shared model kind {name!r}; choose one of {choices}"
        )
    return found[name]


def kind_names() -> tuple[str, ...]:
    """Registered kind names, built-ins first."""
    return tuple(kinds())


def register(kind: SharedModelKind) -> None:
    """Add a kind in this process only (embedding applications; entry points are the norm)."""
    checked = check_kind(kind.name, kind)
    found = kinds()
    if checked.name in BUILTIN:
        raise ValueError(f"{checked.name!r} is a built-in shared model kind")
    global _kinds
    with _lock:
        _kinds = {**found, checked.name: checked}
