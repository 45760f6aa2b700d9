"""``python -m gateway``: the REST and gRPC edges in one process, one event loop, one pipeline."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn

from gateway.grpc_edge import GatewayService
from gateway.guard import Guard
from gateway.load import InteractiveLoad
from gateway.pipeline import Pipeline
from gateway.rest import RestServer, create_app
from gateway.settings import GatewaySettings
from mesh.logging import setup_logging
from mesh.server import Health, create_server, listen_addr
from mesh.settings import load_settings
from mesh.telemetry import setup_tracing

# Not __name__, which is "__main__" under `python -m`.
log = logging.getLogger("gateway")


async def serve(settings: GatewaySettings) -> None:
    """Run until SIGTERM/SIGINT, then: NOT_SERVING, drain both edges together, close channels.

    mesh.server.serve runs a gRPC server alone; here uvicorn must stop in the same step.
    """
    # Built inside the loop: aio channels bind to the running loop.
    pipeline = Pipeline(settings)
    guard = Guard(settings, pipeline)
    load = InteractiveLoad(settings)
    service = GatewayService(settings, pipeline, guard, load)
    grpc_server, _ = create_server(listen_addr(settings, settings.gateway_grpc_addr), settings, mtls=False)
    service.register(grpc_server)
    health = Health(grpc_server, service.service_names)
    host, port = settings.http_addr()
    app = create_app(settings, pipeline, guard, load)
    rest = RestServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            # Logs go through mesh's JSON formatter; the REST edge writes its own access line.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_grace_s,
        )
    )

    await grpc_server.start()
    load.start()
    watcher = asyncio.create_task(health.watch(service.ready))
    rest_task = asyncio.create_task(rest.serve())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", extra={"http": f"{host}:{port}", "grpc": listen_addr(settings, settings.gateway_grpc_addr)})

    # uvicorn returning on its own (it could not bind, say) stops the process as well.
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, rest_task], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down", extra={"grace_s": settings.shutdown_grace_s})
    stopping.cancel()
    watcher.cancel()
    await health.shutdown()
    rest.should_exit = True
    await asyncio.gather(grpc_server.stop(settings.shutdown_grace_s), rest_task)
    await service.close()
    await app.state.batches.close()
    await load.close()


def _loop_factory(name: str):
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def main() -> None:
    settings = load_settings(GatewaySettings)
    setup_logging(settings.service_name, settings.log_level)
    provider = setup_tracing(settings)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
