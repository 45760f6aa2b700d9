"""A local CA and one certificate per process for mutual TLS inside the mesh.

Every certificate is valid for its service's name (k8s DNS), ``localhost`` and 127.0.0.1, and
for both server and client authentication: a service serves with it and the gateway (and the
router, inference, ...) presents it when calling.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.settings import REPO_ROOT

DEFAULT_DIR = REPO_ROOT / "certs"
SERVICES = ("gateway", "preprocess", "router", "inference", "postprocess")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(
    directory: Path, name: str = "llmesh local CA", days: int = 825
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(directory / "ca-key.pem", _pem_key(key), private=True)
    return cert, key


def make_cert(
    directory: Path,
    name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 825,
) -> tuple[Path, Path]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _pem_key(key), private=True)
    return cert_path, key_path


def generate(
    directory: Path, services: Sequence[str] = SERVICES, hosts: Sequence[str] = ("localhost", "127.0.0.1")
) -> None:
    """A fresh CA and a certificate per service in ``directory``."""
    ca_cert, ca_key = make_ca(directory)
    for service in services:
        make_cert(directory, service, ca_cert, ca_key, hosts)


def tls_env(directory: Path, service: str) -> dict[str, str]:
    """The LLMESH_TLS_* variables that make ``service`` use its certificate from ``directory``."""
    return {
        "LLMESH_TLS_ENABLED": "true",
        "LLMESH_TLS_CA_FILE": str(directory / "ca.pem"),
        "LLMESH_TLS_CERT_FILE": str(directory / f"{service}.pem"),
        "LLMESH_TLS_KEY_FILE": str(directory / f"{service}-key.pem"),
    }
