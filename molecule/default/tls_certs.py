"""A throw-away CA and server certificates for the scenario, made on the controller with
``cryptography`` (a dependency of ansible-core, so it is in the controller's venv).

    tls_certs.py DIR NAME [--names a,b] [--mismatched-key]

writes DIR/ca.pem and DIR/ca.key once, then DIR/NAME.pem (the chain: server certificate
and CA) and DIR/NAME.key (its ECDSA P-256 key), and prints the SHA-256 fingerprint of the
server certificate. With --mismatched-key the key belongs to another certificate: what
the role must refuse.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOSTNAME = "proxy.molecule.test"


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: str, data: bytes, mode: int = 0o600) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def ca(directory: str):
    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
        with open(key_path, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), None)
        return cert, key
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetproxy molecule test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, _pem_key(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def server(directory: str, name: str, names: list[str], mismatched_key: bool = False) -> str:
    ca_cert, ca_key = ca(directory)
    key = _key()
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(os.path.join(directory, f"{name}.pem"), chain, 0o644)
    _write(os.path.join(directory, f"{name}.key"), _pem_key(_key() if mismatched_key else key))
    return cert.fingerprint(hashes.SHA256()).hex()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("directory")
    parser.add_argument("name")
    parser.add_argument("--names", default=HOSTNAME, help="comma-separated DNS names and IP addresses")
    parser.add_argument("--mismatched-key", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.directory, exist_ok=True)
    print(server(args.directory, args.name, args.names.split(","), args.mismatched_key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
