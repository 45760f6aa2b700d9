"""Variant-aware discovery: a deployment of a service resolves to its own address."""

import pytest

from mesh.discovery import PRIMARY, ChannelPool, Discovery
from mesh.settings import MeshSettings

SETTINGS = MeshSettings(router_addr="127.0.0.1:50052", variant_addrs={"router": {"b": "127.0.0.1:50062"}})


def test_primary_and_variant_addresses():
    discovery = Discovery(SETTINGS)
    assert discovery.address("router") == "127.0.0.1:50052"
    assert discovery.address("router", "b") == "127.0.0.1:50062"
    assert discovery.address("router", "c") is None
    assert discovery.address("inference", "b") is None
    assert discovery.deployments("router") == [PRIMARY, "b"]


def test_variant_addresses_are_checked_at_start():
    with pytest.raises(ValueError, match="HOST:PORT"):
        MeshSettings(variant_addrs={"router": {"b": "no-port"}})


async def test_pool_keeps_one_channel_per_deployment():
    pool = ChannelPool(SETTINGS)
    assert pool.channel("router", "b") is pool.channel("router", "b")
    with pytest.raises(LookupError):
        pool.channel("router", "c")
    await pool.close()
