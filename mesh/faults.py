"""Fault injection for tests and game days, as Istio's: a delay, or an abort with a status code,
for a share of a service's calls. Off unless ``fault_injection_enabled``; then set for a whole
process by settings (``fault_delay_s`` with ``fault_delay_share``, ``fault_abort_code`` with
``fault_abort_share``), or per request by a header that only callers with the admin key may send:

    x-llmesh-fault: inference:abort=UNAVAILABLE:share=0.5,router:delay=0.3
    x-llmesh-admin-key: <LLMESH_ADMIN_KEY>

Each entry names the service it applies to (its ``service_name``: gateway, preprocess, router,
inference, postprocess). The header travels with the request to every service it reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Counter

from mesh.deadlines import ApplicationCallInterceptor, Behavior, Context, DetailsClientInterceptor, for_every_call_kind
from mesh.errors import abort
from mesh.settings import MeshSettings

FAULT_HEADER = "x-llmesh-fault"
ADMIN_KEY_HEADER = "x-llmesh-admin-key"
FAULT_INJECTED = "FAULT_INJECTED"
INJECTED = Counter("llmesh_faults_injected_total", "Faults injected into calls", ["kind"])

# (fault header, admin key) of the current request, passed on to every call it makes.
_forwarded: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("llmesh_fault", default=None)


class FaultRefused(Exception):
    """A fault header from a caller without the admin key, or one that does not parse."""


@dataclass(frozen=True)
class Fault:
    delay_s: float = 0.0
    delay_share: float = 0.0
    abort_code: grpc.StatusCode | None = None
    abort_share: float = 0.0

    def draw(self) -> tuple[float, grpc.StatusCode | None]:
        """For one call: how long to delay it, and the code to abort it with (or None)."""
        delay = self.delay_s if self.delay_s and random.random() < self.delay_share else 0.0
        code = self.abort_code if self.abort_code is not None and random.random() < self.abort_share else None
        return delay, code


def _code(name: str) -> grpc.StatusCode:
    try:
        code = grpc.StatusCode[name.upper()]
    except KeyError:
        raise ValueError(f"unknown status code {name!r}") from None
    if code == grpc.StatusCode.OK:
        raise ValueError("an abort needs an error code, not OK")
    return code


def _share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be between 0 and 1, got {value}")
    return share


def parse_header(value: str) -> dict[str, Fault]:
    """``service:delay=S:abort=CODE:share=P`` entries, comma-separated -> fault per service."""
    faults = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        service, *fields = entry.split(":")
        options = {}
        for field in fields:
            name, sep, setting = field.partition("=")
            if not sep or name not in ("delay", "abort", "share"):
                raise ValueError(f"expected delay=S, abort=CODE or share=P, got {field!r}")
            options[name] = setting
        if not service or not ({"delay", "abort"} & options.keys()):
            raise ValueError(f"expected SERVICE:delay=S or SERVICE:abort=CODE, got {entry!r}")
        share = _share(options.get("share", "1"))
        delay = float(options.get("delay", 0))
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay}")
        code = _code(options["abort"]) if "abort" in options else None
        faults[service] = Fault(delay, share if delay else 0.0, code, share if code is not None else 0.0)
    return faults


class FaultInjector:
    """What one process injects: its configured fault, or what an authorised header asks."""

    def __init__(self, settings: MeshSettings) -> None:
        self.enabled = settings.fault_injection_enabled
        self.service = settings.service_name
        self.admin_key = settings.admin_key.get_secret_value() if settings.admin_key else ""
        code = _code(settings.fault_abort_code) if settings.fault_abort_share else None
        self.configured = Fault(settings.fault_delay_s, settings.fault_delay_share, code, settings.fault_abort_share)

    def fault_for(self, header: str | None, presented_key: str | None) -> Fault:
        """This process's fault for a request with these headers; raises FaultRefused for a
        header without the admin key, or one that does not parse. An accepted header is passed
        on to the calls the request makes (``forward``)."""
        if not self.enabled or not header:
            return self.configured
        if not self.admin_key or not secrets.compare_digest(presented_key or "", self.admin_key):
            raise FaultRefused(f"the {FAULT_HEADER} header needs the admin key ({ADMIN_KEY_HEADER})")
        try:
            faults = parse_header(header)
        except ValueError as error:
            raise FaultRefused(f"invalid {FAULT_HEADER} header: {error}") from None
        return faults.get(self.service, self.configured)

    def forward(self, header: str | None, presented_key: str | None) -> None:
        """Every call this task (and the tasks it starts) makes carries the accepted header."""
        if self.enabled and header:
            _forwarded.set((header, presented_key or ""))


async def inject(fault: Fault) -> grpc.StatusCode | None:
    """Delay as the fault says; returns the code to abort with, if any."""
    delay, code = fault.draw()
    if delay:
        INJECTED.labels("delay").inc()
        await asyncio.sleep(delay)
    if code is not None:
        INJECTED.labels("abort").inc()
    return code


def _metadata(context: Context, key: str) -> str | None:
    return next((value for k, value in context.invocation_metadata() or () if k == key), None)


class FaultServerInterceptor(ApplicationCallInterceptor):
    """Installed by mesh.server.create_server when fault injection is enabled."""

    def __init__(self, settings: MeshSettings) -> None:
        self.injector = FaultInjector(settings)

    def wrap(self, behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
        injector = self.injector

        async def before(context: Context) -> None:
            header, key = _metadata(context, FAULT_HEADER), _metadata(context, ADMIN_KEY_HEADER)
            try:
                fault = injector.fault_for(header, key)
            except FaultRefused as error:
                await abort(context, grpc.StatusCode.PERMISSION_DENIED, str(error), "FAULT_REFUSED")
            injector.forward(header, key)
            code = await inject(fault)
            if code is not None:
                await abort(context, code, f"fault injected into {injector.service}", FAULT_INJECTED)

        if response_streaming:

            async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
                await before(context)
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response

            return stream_behavior

        async def unary_behavior(request: Any, context: Context) -> Any:
            await before(context)
            return await behavior(request, context)

        return unary_behavior


class FaultClientInterceptor(DetailsClientInterceptor):
    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        forwarded = _forwarded.get()
        if forwarded is None:
            return details
        header, key = forwarded
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), (FAULT_HEADER, header), (ADMIN_KEY_HEADER, key)),
            details.credentials,
            details.wait_for_ready,
        )


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return for_every_call_kind(FaultClientInterceptor)
