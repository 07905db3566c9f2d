"""Which objects in the store each resource owns, so every deleter removes the same set."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.db.models import Avatar, Render
from shared.exports import export_prefix
from shared.storage import ObjectStore, tenant_key


@dataclass
class Owned:
    """Key prefixes and single keys (those outside the prefixes) that belong to resources."""

    prefixes: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def add(self, other: Owned) -> None:
        """Take over everything `other` owns."""
        self.prefixes += other.prefixes
        self.keys += other.keys


def tenant_prefix(tenant_id: str) -> str:
    """The prefix of every object keyed under the tenant (ends with '/')."""
    return tenant_key(tenant_id) + "/"


def resource_prefix(tenant_id: str, kind: str, resource_id: str) -> str:
    """The prefix of one avatar's or render's objects, e.g. `tenants/T/renders/R/`."""
    return tenant_key(tenant_id, kind, resource_id) + "/"


def outside(key: str | None, prefixes: list[str]) -> list[str]:
    """`[key]` when it is set and under none of `prefixes`, else `[]`."""
    return [key] if key and not any(key.startswith(p) for p in prefixes) else []


def render_objects(render: Render) -> Owned:
    """A render's folder plus its audio when that came through an upload."""
    prefix = resource_prefix(render.tenant_id, "renders", render.id)
    keys = outside(render.audio_key, [prefix]) + outside(render.video_key, [prefix])
    return Owned([prefix], keys)


def avatar_objects(avatar: Avatar) -> Owned:
    """An avatar's folder, its export (keyed by avatar id alone) and its uploaded source."""
    prefixes = [resource_prefix(avatar.tenant_id, "avatars", avatar.id), export_prefix(avatar.id)]
    return Owned(prefixes, outside(avatar.source_key, prefixes))


def remove_owned(store: ObjectStore, owned: Owned) -> int:
    """Delete everything `owned` names; returns how many objects under the prefixes went."""
    removed = sum(store.delete_prefix(prefix) for prefix in owned.prefixes)
    for key in owned.keys:
        store.delete(key)
    return removed
