"""Where a service is: its address from settings, and variant-aware for A/B tests.

A service has its primary deployment at ``LLMESH_<SERVICE>_ADDR`` and may have more deployments,
each an experiment variant, at the addresses in ``LLMESH_VARIANT_ADDRS`` (JSON:
``{"router": {"b": "127.0.0.1:50062"}}``). Locally a deployment is another process on another
port; in Kubernetes each deployment is a subset of the same Service, chosen by Istio from the
assignment header, so the addresses there are all the Service's DNS name.
"""

from __future__ import annotations

import grpc

from mesh.channel import build_channel
from mesh.settings import MeshSettings

PRIMARY = "primary"


class Discovery:
    def __init__(self, settings: MeshSettings) -> None:
        self.settings = settings

    def address(self, service: str, deployment: str = PRIMARY) -> str | None:
        """The address of a deployment of a service; None when it is not known here."""
        if deployment == PRIMARY:
            return getattr(self.settings, f"{service}_addr", None)
        return self.settings.variant_addrs.get(service, {}).get(deployment)

    def deployments(self, service: str) -> list[str]:
        return [PRIMARY, *self.settings.variant_addrs.get(service, {})]


class ChannelPool:
    """One channel per (service, deployment), built on first use and kept: a channel is a
    connection pool, and building one per request would reconnect every time."""

    def __init__(self, settings: MeshSettings, primary: dict[str, grpc.aio.Channel] | None = None) -> None:
        self.settings = settings
        self.discovery = Discovery(settings)
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {
            (service, PRIMARY): channel for service, channel in (primary or {}).items()
        }
        self._owned: list[grpc.aio.Channel] = []

    def channel(self, service: str, deployment: str = PRIMARY) -> grpc.aio.Channel:
        key = (service, deployment)
        if key not in self._channels:
            address = self.discovery.address(service, deployment)
            if address is None:
                raise LookupError(f"no address for deployment {deployment!r} of {service!r} (LLMESH_VARIANT_ADDRS)")
            self._channels[key] = build_channel(address, self.settings)
            self._owned.append(self._channels[key])
        return self._channels[key]

    async def close(self) -> None:
        """Closes the channels this pool built (primary channels belong to whoever passed them)."""
        for channel in self._owned:
            await channel.close()
        self._owned.clear()
