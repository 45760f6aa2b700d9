"""The admin API's guard: every /admin route depends on ``require_admin``."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request

from gateway.errors import GatewayError, Unauthorized


class AdminDisabled(GatewayError):
    http_status = 404
    error_type = "invalid_request_error"
    reason = "ADMIN_API_DISABLED"


def require_admin(request: Request) -> None:
    admin_key = request.app.state.settings.admin_key
    if admin_key is None:
        raise AdminDisabled("The admin API is disabled: set LLMESH_ADMIN_KEY to enable it.")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    # Constant-time comparison: the admin key must not leak through response timing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), admin_key.get_secret_value().encode()):
        raise Unauthorized("A valid admin key is required (Authorization: Bearer <admin key>).")


def admin_router() -> APIRouter:
    """A router whose every route requires the admin key; mount it under /admin."""
    return APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], tags=["admin"])
