"""Health probes: is a gRPC server SERVING (grpc.health.v1), does an HTTP endpoint answer 200?

    python -m mesh.probe 127.0.0.1:50051            exit 0 when SERVING
    python -m mesh.probe http://127.0.0.1:8080/readyz

`llmesh up` polls with the functions; docker-compose.yml's health checks run the command
(kept to grpc and the standard library, so a check every few seconds stays cheap).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def grpc_serving(target: str, credentials: grpc.ChannelCredentials | None = None) -> Callable[[], bool]:
    """A probe: is the gRPC server at ``target`` SERVING (grpc.health.v1)?"""

    def check() -> bool:
        channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        with channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mesh.probe HOST:PORT | http://HOST:PORT/PATH", file=sys.stderr)
        return 2
    target = argv[0]
    healthy = http_ok(target) if target.startswith(("http://", "https://")) else grpc_serving(target)()
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
