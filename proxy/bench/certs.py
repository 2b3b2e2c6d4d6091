"""Throw-away TLS certificates for the HTTPS scenarios (generated per run, never committed).

One self-signed certificate per key type, for the name :data:`NAME`, written as
one PEM file holding the certificate and its private key: the form both
HAProxy (``bind ... ssl crt FILE``) and fleetproxy (``tls: {certificates:
[FILE]}``) read, so both proxies serve the very same certificate.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

NAME = "fpb.bench.test"
KEY_TYPES = {"ecdsa": "ECDSA P-256", "rsa": "RSA 2048"}


def generate(kind: str, directory: Path) -> Path:
    """Write ``directory/fpb-KIND.pem`` (certificate + key, mode 0600) and return it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unknown key type {kind!r}; known: {', '.join(KEY_TYPES)}")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"fpb-{kind}.pem"
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return path
