"""The registry of renderer families: the built-in ones and those of installed packages.

An operator's package adds a family without editing this repository by declaring an entry
point in the `talkinghead.families` group whose object satisfies `RendererFamily`:

    [project.entry-points."talkinghead.families"]
    myfamily = "my_package.family:FAMILY"

This module is the one place outside a family's folder that names families.
"""

from __future__ import annotations

import importlib
import logging
import threading
from importlib.metadata import entry_points

from talkinghead.families.contract import AVATAR_STAGES, SOURCES, RendererFamily

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "talkinghead.families"
# Built-ins, first one the default. Loaded lazily: naming a family imports nothing heavy.
BUILTIN = {
    "radnerf": "talkinghead.families.radnerf.family:FAMILY",
    "meanframe": "talkinghead.families.meanframe.family:FAMILY",
}
DEFAULT_FAMILY = "radnerf"

_lock = threading.Lock()
_families: dict[str, RendererFamily] | None = None


class UnknownFamily(LookupError):
    """No family of that name is registered."""


def _load(target: str) -> object:
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def check_family(name: str, family: object) -> RendererFamily:
    """`family` if it satisfies the contract under `name`; ValueError saying what is wrong."""
    if not isinstance(family, RendererFamily):
        raise ValueError(f"family {name!r} does not implement the RendererFamily contract")
    if family.name != name:
        raise ValueError(f"entry point {name!r} holds a family named {family.name!r}")
    if not family.sources or not set(family.sources) <= set(SOURCES):
        raise ValueError(f"family {name!r}: sources must be a non-empty subset of {SOURCES}")
    bad = [s for s in family.stages if s not in AVATAR_STAGES]
    if bad or not family.stages or family.stages[0] != "ingesting":
        raise ValueError(f"family {name!r}: stages must start with ingesting, from {AVATAR_STAGES}")
    if family.stages[-1] != "exporting":
        raise ValueError(f"family {name!r}: the last stage must be exporting")
    if family.default_preset not in family.presets:
        raise ValueError(f"family {name!r}: default preset {family.default_preset!r} is unknown")
    return family


def _discover() -> dict[str, RendererFamily]:
    found = {name: check_family(name, _load(target)) for name, target in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            continue  # the project's own entry points name the built-ins again
        try:
            found[ep.name] = check_family(ep.name, ep.load())
        except Exception:
            # One broken package must not take every other family down with it; the
            # operator sees why in the log, and its avatars fail `renderer_unavailable`.
            log.exception("renderer family %r (%s) cannot be loaded", ep.name, ep.value)
    return found


def families() -> dict[str, RendererFamily]:
    """Every registered family by name, built-ins first (loaded once per process)."""
    global _families
    with _lock:
        if _families is None:
            _families = _discover()
        return dict(_families)


def reload() -> dict[str, RendererFamily]:
    """Discover the families again (after installing a package at run time; tests)."""
    global _families
    with _lock:
        _families = None
    return families()


def get_family(name: str) -> RendererFamily:
    """The family called `name`; UnknownFamily names the registered ones."""
    found = families()
    if name not in found:
        raise UnknownFamily(f"unknown renderer family {name!r}; choose one of {sorted(found)}")
    return found[name]


def family_names() -> tuple[str, ...]:
    """Registered family names, the default first."""
    return tuple(families())


def register(family: RendererFamily) -> None:
    """Add a family in this process only (embedding applications; entry points are the norm)."""
    checked = check_family(family.name, family)
    found = families()
    if checked.name in BUILTIN:
        raise ValueError(f"{checked.name!r} is a built-in family")
    global _families
    with _lock:
        _families = {**found, checked.name: checked}
