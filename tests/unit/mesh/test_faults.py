"""Fault specs (mesh.faults): the header's grammar, refusals without the admin key, shares."""

import random

import grpc
import pytest
from pydantic import SecretStr

from mesh.faults import Fault, FaultInjector, FaultRefused, parse_header
from mesh.settings import MeshSettings


def test_header_entries_per_service():
    faults = parse_header("inference:abort=unavailable:share=0.5, router:delay=0.3")
    assert faults == {
        "inference": Fault(abort_code=grpc.StatusCode.UNAVAILABLE, abort_share=0.5),
        "router": Fault(delay_s=0.3, delay_share=1.0),
    }


@pytest.mark.parametrize(
    "header",
    [
        "inference",
        "inference:share=1",
        "inference:abort=OK",
        "inference:abort=NOPE",
        "x:delay=-1",
        "x:delay=1:share=2",
        "x:wait=1",
    ],
)
def test_malformed_headers_are_refused(header):
    with pytest.raises(ValueError):
        parse_header(header)


def _injector(**settings) -> FaultInjector:
    return FaultInjector(MeshSettings(service_name="inference", **settings))


def test_the_header_needs_the_admin_key_and_is_ignored_when_disabled():
    header = "inference:abort=UNAVAILABLE"
    assert _injector().fault_for(header, None) == Fault()
    enabled = _injector(fault_injection_enabled=True, admin_key=SecretStr("secret"))
    for presented in (None, "", "wrong"):
        with pytest.raises(FaultRefused, match="admin key"):
            enabled.fault_for(header, presented)
    assert enabled.fault_for(header, "secret").abort_code == grpc.StatusCode.UNAVAILABLE
    # Without an admin key configured no one may send the header.
    with pytest.raises(FaultRefused):
        _injector(fault_injection_enabled=True).fault_for(header, "")


def test_configured_faults_apply_to_their_share_of_calls():
    injector = _injector(fault_injection_enabled=True, fault_abort_share=0.3, fault_abort_code="internal")
    random.seed(12)
    codes = [injector.fault_for(None, None).draw()[1] for _ in range(2000)]
    aborted = [code for code in codes if code is not None]
    assert set(aborted) == {grpc.StatusCode.INTERNAL}
    assert 0.25 < len(aborted) / len(codes) < 0.35


def test_a_bad_abort_code_fails_at_start():
    with pytest.raises(ValueError, match="status code"):
        MeshSettings(fault_abort_code="BROKEN")
