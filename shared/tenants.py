"""Tenants and API keys: creation, hashing and lookup."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "th_"


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key (keys are long random tokens, so no slow hash)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key_secret() -> str:
    """A fresh API key in plain text."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def issue_key(session: Session, tenant_id: str, name: str = "") -> tuple[ApiKey, str]:
    """Create an API key for a tenant; returns the row and the plain key (shown once)."""
    plain = new_key_secret()
    row = ApiKey(tenant_id=tenant_id, name=name, digest=hash_key(plain), prefix=plain[:10])
    session.add(row)
    session.flush()
    return row, plain


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """Create a tenant with a webhook secret and its first key; returns the plain key."""
    tenant = Tenant(name=name, webhook_secret=secrets.token_hex(32))
    session.add(tenant)
    session.flush()
    _, plain = issue_key(session, tenant.id, name="initial")
    return tenant, plain


def authenticate(session: Session, key: str) -> ApiKey | None:
    """The live API key matching `key`, or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.digest == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def revoke_key(session: Session, tenant_id: str, key_id: str) -> bool:
    """Revoke one of the tenant's keys; False if it has no such key."""
    row = session.get(ApiKey, key_id)
    if row is None or row.tenant_id != tenant_id:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return True


OPERATOR_TENANT = "_operator"


def operator_tenant_id(session: Session) -> str:
    """The tenant that owns operator jobs (corpora, shared models); made on first use."""
    found = session.scalar(select(Tenant.id).where(Tenant.name == OPERATOR_TENANT))
    if found is not None:
        return found
    tenant = Tenant(name=OPERATOR_TENANT, webhook_secret=secrets.token_hex(32))
    session.add(tenant)
    session.flush()
    return tenant.id
