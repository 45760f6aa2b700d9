"""API-key routes: a tenant's own keys under /v1/keys, every tenant's under /admin/keys."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gateway.admin import admin_router
from gateway.tenancy import ApiKey, Tenancy


async def api_key(request: Request) -> ApiKey:
    """The caller's key record (401 without a valid key): a FastAPI dependency."""
    return await request.app.state.guard.authenticate(request.headers.get("authorization"))


def _tenancy(request: Request) -> Tenancy:
    return request.app.state.guard.tenancy


class NewKey(BaseModel):
    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = ""
    # The tenant's limits (all its keys share them); unset keeps the current or default ones.
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)


def tenant_router() -> APIRouter:
    router = APIRouter(prefix="/v1/keys", tags=["keys"])

    @router.get("")
    async def list_own(request: Request, key: ApiKey = Depends(api_key)) -> dict:
        keys = await _tenancy(request).list_keys(key.tenant)
        return {"object": "list", "data": [asdict(k) for k in keys]}

    @router.delete("/{key_id}")
    async def revoke_own(key_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict:
        # Another tenant's key id is a 404, the same as one that does not exist.
        revoked = await _tenancy(request).revoke(key_id, tenant=key.tenant)
        return {"id": revoked.key_id, "object": "api_key", "deleted": True}

    return router


def admin_keys_router() -> APIRouter:
    router = admin_router()

    @router.post("/keys")
    async def create(body: NewKey, request: Request) -> dict:
        key, record = await _tenancy(request).create_key(body.tenant, body.name, body.rpm, body.tpm)
        return {**asdict(record), "key": key}

    @router.get("/keys")
    async def list_all(request: Request, tenant: str | None = None) -> dict:
        keys = await _tenancy(request).list_keys(tenant)
        return {"object": "list", "data": [asdict(k) for k in keys]}

    @router.delete("/keys/{key_id}")
    async def revoke(key_id: str, request: Request) -> dict:
        revoked = await _tenancy(request).revoke(key_id)
        return {"id": revoked.key_id, "object": "api_key", "deleted": True}

    return router
