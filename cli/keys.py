"""`llmesh keys create|list|revoke`: tenants' API keys, straight in the mesh's Redis
(LLMESH_REDIS_URL); the admin API (/admin/keys) does the same over HTTP."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.table import Table

from gateway.errors import GatewayError
from gateway.settings import GatewaySettings
from gateway.tenancy import ApiKey, Tenancy
from mesh.settings import load_settings

app = typer.Typer(help="tenants' API keys", no_args_is_help=True)
console = Console()


async def _with_tenancy(redis_url: str | None, work):
    settings = load_settings(GatewaySettings, **({"redis_url": redis_url} if redis_url else {}))
    tenancy = Tenancy(settings)
    try:
        return await work(tenancy)
    finally:
        await tenancy.close()


def create_key(
    redis_url: str | None, tenant: str, name: str = "", rpm: int | None = None, tpm: int | None = None
) -> tuple[str, ApiKey]:
    return asyncio.run(_with_tenancy(redis_url, lambda t: t.create_key(tenant, name, rpm, tpm)))


_REDIS = typer.Option(None, "--redis-url", help="default: LLMESH_REDIS_URL")


@app.command()
def create(
    tenant: str,
    name: str = typer.Option("", help="a label for the key"),
    rpm: int = typer.Option(None, help="the tenant's requests per minute (default: the gateway's)"),
    tpm: int = typer.Option(None, help="the tenant's tokens per minute (default: the gateway's)"),
    as_json: bool = typer.Option(False, "--json"),
    redis_url: str = _REDIS,
) -> None:
    """Create a key for TENANT; the key is printed once and only its hash is stored."""
    key, record = create_key(redis_url, tenant, name, rpm, tpm)
    if as_json:
        print(json.dumps({**asdict(record), "key": key}))
    else:
        console.print(f"key id [bold]{record.key_id}[/] for tenant [bold]{tenant}[/]:\n{key}", soft_wrap=True)


@app.command("list")
def list_keys(
    tenant: str = typer.Option(None, help="only this tenant's keys"),
    as_json: bool = typer.Option(False, "--json"),
    redis_url: str = _REDIS,
) -> None:
    """List keys (ids, tenants, names; never the keys themselves)."""
    keys = asyncio.run(_with_tenancy(redis_url, lambda t: t.list_keys(tenant)))
    if as_json:
        print(json.dumps([asdict(k) for k in keys]))
        return
    table = Table("key id", "tenant", "name", "created")
    for key in keys:
        table.add_row(key.key_id, key.tenant, key.name, str(key.created))
    console.print(table)


@app.command()
def revoke(key_id: str, redis_url: str = _REDIS) -> None:
    """Revoke a key by its id; it stops working at once on every gateway."""
    try:
        record = asyncio.run(_with_tenancy(redis_url, lambda t: t.revoke(key_id)))
    except GatewayError as error:
        console.print(f"[red]{error.message}[/]")
        raise typer.Exit(1) from None
    console.print(f"revoked {record.key_id} (tenant {record.tenant})")
