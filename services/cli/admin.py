"""Operator verbs with direct database access: `admin tenant create`, `admin key create`."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.common import JsonOut, _fail, _print_json, _settings

admin_app = typer.Typer(help="Operator tasks with direct database access.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
admin_key_app = typer.Typer(help="API keys of any tenant.", no_args_is_help=True)
admin_app.add_typer(tenant_app, name="tenant")
admin_app.add_typer(admin_key_app, name="key")


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Unique tenant name.")],
    as_json: JsonOut = False,
) -> None:
    """Create a tenant; prints its id, first API key and webhook secret (shown once)."""
    settings = _settings()
    from sqlalchemy import select

    from shared.db.migrate import upgrade
    from shared.db.models import ApiKey, Tenant
    from shared.db.session import session_scope
    from shared.tenants import create_tenant

    if not name.strip() or len(name) > 200:
        raise typer.BadParameter("must be 1-200 characters", param_hint="NAME")
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
            _fail("tenant_exists", f"a tenant named {name!r} already exists")
        tenant, key = create_tenant(session, name)
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == tenant.id))
        result = {
            "tenant_id": tenant.id,
            "name": tenant.name,
            "api_key_id": key_id,
            "api_key": key,
            "webhook_secret": tenant.webhook_secret,
        }
    if as_json:
        _print_json(result)
        return
    typer.echo(f"tenant          {result['tenant_id']}  ({name})")
    typer.echo(f"api key         {key}")
    typer.echo(f"webhook secret  {result['webhook_secret']}")
    typer.echo("The key and secret are shown only now; store them safely.")


@admin_key_app.command("create")
def admin_key_create(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id (tn_…).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    as_json: JsonOut = False,
) -> None:
    """Issue a new API key for a tenant."""
    settings = _settings()
    from shared.db.migrate import upgrade
    from shared.db.models import Tenant
    from shared.db.session import session_scope
    from shared.tenants import issue_key

    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        if session.get(Tenant, tenant_id) is None:
            _fail("tenant_not_found", f"no tenant {tenant_id}")
        row, key = issue_key(session, tenant_id, name=name)
        result = {"tenant_id": tenant_id, "api_key_id": row.id, "name": name, "api_key": key}
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"api key  {key}  (id {row.id}; shown only now)")
