"""``python -m gateway``: the REST and gRPC edges in one process, one event loop, one pipeline,
run and drained together by mesh.server.serve like every other process. ``python -m
cli.colocated`` runs the same with the gRPC services hosted in this process (mesh.local)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import uvicorn

from gateway.grpc_edge import GatewayService
from gateway.guard import Guard
from gateway.load import InteractiveLoad
from gateway.pipeline import Pipeline
from gateway.rest import RestEdge, create_app
from gateway.settings import GatewaySettings
from mesh.local import HostedService
from mesh.logging import setup_logging
from mesh.server import Health, create_server, listen_addr, serve
from mesh.settings import load_settings
from mesh.telemetry import setup_tracing


async def run(settings: GatewaySettings, hosted: Sequence[HostedService] = ()) -> None:
    # Built inside the loop: aio channels bind to the running loop. The services this process
    # hosts are started before the pipeline, whose channels to them are then local.
    pipeline = Pipeline(settings)
    guard = Guard(settings, pipeline)
    load = InteractiveLoad(settings)
    service = GatewayService(settings, pipeline, guard, load)
    grpc_server, _ = create_server(listen_addr(settings, settings.gateway_grpc_addr), settings, mtls=False)
    service.register(grpc_server)
    host, port = settings.http_addr()
    app = create_app(settings, pipeline, guard, load)
    rest = RestEdge(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            # Logs go through mesh's JSON formatter; the REST edge writes its own access line.
            log_config=None,
            access_log=False,
            # Annotated int, used as asyncio.wait_for's timeout, which takes seconds as a float.
            timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        ),
    )

    async def close() -> None:
        await service.close()
        await app.state.batches.close()
        await load.close()
        for one in hosted:
            await one.close()

    def draining() -> None:
        # /readyz answers 503 from the first moment of the drain, like the gRPC health.
        app.state.draining = True

    load.start()
    await serve(
        grpc_server,
        Health(grpc_server, service.service_names),
        settings,
        readiness=service.ready,
        on_stop=close,
        companions=[rest, *hosted],
        on_draining=draining,
    )


def _loop_factory(name: str):
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def main(hosting: Callable[[], Awaitable[Sequence[HostedService]]] | None = None) -> None:
    """``hosting`` starts the services this process hosts, in its event loop."""
    settings = load_settings(GatewaySettings)
    setup_logging(settings.service_name, settings.log_level)
    provider = setup_tracing(settings)

    async def start() -> None:
        await run(settings, await hosting() if hosting is not None else ())

    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(start())
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
