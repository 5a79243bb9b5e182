"""Throw-away TLS material for tests: a CA, a broker certificate for 127.0.0.1, a device certificate."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetwatch.localservers import HOST


def write_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a device certificate with CN dev-1, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
        **extensions: x509.ExtensionType,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else name
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension in extensions.values():
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer[1] if issuer else key, hashes.SHA256())

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("fleetwatch test CA", ca_key, None, basic=x509.BasicConstraints(ca=True, path_length=None))
    write("ca", ca_key, ca)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))])
    write("server", server_key, issue(HOST, server_key, ("fleetwatch test CA", ca_key), san=san))
    device_key = ec.generate_private_key(ec.SECP256R1())
    write("dev-1", device_key, issue("dev-1", device_key, ("fleetwatch test CA", ca_key)))
