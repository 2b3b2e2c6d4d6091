"""TLS: certificate stores with SNI selection, server and client contexts, and
the ClientHello parser used for SNI routing in TCP mode (no termination).

A bind's ``certificates`` are PEM files (certificate chain and private key in
one file, or the key beside it as ``FILE.key``) or directories of such files
(``*.pem``, ``*.crt``).  Each certificate gets its own ``SSLContext`` with the
same settings; the names it answers for come from its subjectAltName DNS
entries (wildcards included), or its CN when it has none.  The SNI callback of
the listening context switches to the certificate whose names match the
client's server name, exactly first, then by wildcard; with no match it keeps
the default certificate, or with ``strict_sni`` refuses the handshake.

Defaults are those of a modern reverse proxy: TLS 1.2 minimum, ECDHE with
AES-GCM or ChaCha20-Poly1305 for TLS 1.2 (TLS 1.3 suites are all AEAD), no
compression, no renegotiation, server cipher preference.  Session-ticket keys
belong to a context; :meth:`ServerTls.rotate` builds fresh contexts (new keys)
every ``ticket_rotation``.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

log = logging.getLogger("fleetproxy.tls")

DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CERT_SUFFIXES = (".pem", ".crt")


# --------------------------------------------------------------------------
# Certificate files
# --------------------------------------------------------------------------


def certificate_files(path: str) -> list[str]:
    """The certificate files a ``certificates`` entry stands for (a file or a directory)."""
    if os.path.isdir(path):
        return sorted(
            str(p) for p in Path(path).iterdir()
            if p.is_file() and p.suffix in CERT_SUFFIXES and not p.name.startswith(".")
        )
    return [path]


def _key_file(cert: str) -> str | None:
    for candidate in (cert + ".key", os.path.splitext(cert)[0] + ".key"):
        if os.path.isfile(candidate):
            return candidate
    return None


def names_of(cert_path: str) -> list[str]:
    """DNS names of the leaf certificate: subjectAltName, else the CN."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID, NameOID

    data = Path(cert_path).read_bytes()
    leaf = x509.load_pem_x509_certificates(data)[0]
    try:
        san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        if names:
            return names
    except x509.ExtensionNotFound:
        pass
    return [str(a.value).lower() for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def inspect_path(path: str, directory: bool = True) -> list[str]:
    """Problems with a certificate entry (empty when usable), each naming the file."""
    if not os.path.exists(path):
        return [f"{path}: no such file or directory"]
    if os.path.isdir(path):
        if not directory:
            return [f"{path}: is a directory, a certificate file is needed"]
        files = certificate_files(path)
        if not files:
            return [f"{path}: no certificate files (*.pem, *.crt) in this directory"]
        return [p for f in files for p in inspect_path(f, directory=False)]
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(path, _key_file(path))
    except PermissionError:
        return [f"{path}: permission denied"]
    except ssl.SSLError as exc:  # before OSError, its base class
        reason = str(exc.reason or exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            return [f"{path}: the private key does not match the certificate"]
        if "PEM" in reason or "NO_START_LINE" in reason:
            return [f"{path}: not a PEM certificate chain with its private key ({reason})"]
        return [f"{path}: {reason}"]
    except OSError as exc:
        return [f"{path}: {exc.strerror or exc}"]
    try:
        if not names_of(path):
            return [f"{path}: the certificate names no host (no subjectAltName DNS entry, no CN)"]
    except (ValueError, IndexError) as exc:
        return [f"{path}: cannot read the certificate: {exc}"]
    return []


def inspect_ca(path: str) -> str | None:
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=path if not os.path.isdir(path) else None,
                                  capath=path if os.path.isdir(path) else None)
    except FileNotFoundError:
        return f"{path}: no such file"
    except PermissionError:
        return f"{path}: permission denied"
    except OSError as exc:  # ssl.SSLError included
        return f"{path}: not a usable CA bundle ({getattr(exc, 'reason', None) or exc})"
    return None


# --------------------------------------------------------------------------
# Terminating TLS on a bind
# --------------------------------------------------------------------------


def _server_context(cfg: Any, cert: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[cfg.min_version]
    ctx.set_ciphers(cfg.ciphers or DEFAULT_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, _key_file(cert))
    if cfg.alpn:
        ctx.set_alpn_protocols(list(cfg.alpn))
    if cfg.client_ca:
        if os.path.isdir(cfg.client_ca):
            ctx.load_verify_locations(capath=cfg.client_ca)
        else:
            ctx.load_verify_locations(cafile=cfg.client_ca)
        ctx.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                           "required": ssl.CERT_REQUIRED}[cfg.verify_client]
    return ctx


class ServerTls:
    """The contexts of one TLS bind, with SNI selection."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.files: list[str] = []
        for entry in cfg.certificates:
            for f in certificate_files(entry):
                if f not in self.files:
                    self.files.append(f)
        if cfg.default_certificate and cfg.default_certificate not in self.files:
            self.files.insert(0, cfg.default_certificate)
        self.names = {f: names_of(f) for f in self.files}
        self.handshake_failures = 0
        self.sni_refused = 0
        self.context = self._build()

    def _build(self) -> ssl.SSLContext:
        cfg = self.cfg
        contexts = {f: _server_context(cfg, f) for f in self.files}
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for f in self.files:
            for name in self.names[f]:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], contexts[f])
                else:
                    exact.setdefault(name, contexts[f])
        default_file = cfg.default_certificate or self.files[0]
        default = contexts[default_file]
        strict = cfg.strict_sni

        def select(sslobj: ssl.SSLObject, server_name: str | None, current: ssl.SSLContext) -> int | None:
            if server_name:
                name = server_name.lower().rstrip(".")
                ctx = exact.get(name)
                if ctx is None:
                    dot = name.find(".")
                    ctx = wildcard.get(name[dot + 1 :]) if dot > 0 else None
                if ctx is not None:
                    if ctx is not current:
                        sslobj.context = ctx
                    return None
            if strict:
                self.sni_refused += 1
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None

        # The listening context is the default certificate's; others are switched in.
        # One certificate and no strict SNI: nothing to choose, no callback per handshake.
        if len(contexts) > 1 or strict:
            default.sni_callback = select
        return default

    def rotate(self) -> ssl.SSLContext:
        """Fresh contexts, hence fresh session-ticket keys."""
        self.context = self._build()
        return self.context


# --------------------------------------------------------------------------
# TLS towards servers
# --------------------------------------------------------------------------


def client_context(cfg: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = VERSIONS[cfg.min_version]
    if cfg.verify == "required":
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = bool(cfg.sni)
        if cfg.ca_file:
            ctx.load_verify_locations(cafile=cfg.ca_file if not os.path.isdir(cfg.ca_file) else None,
                                      capath=cfg.ca_file if os.path.isdir(cfg.ca_file) else None)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.certificate:
        ctx.load_cert_chain(cfg.certificate, _key_file(cfg.certificate))
    if cfg.alpn:
        ctx.set_alpn_protocols(list(cfg.alpn))
    return ctx


def subject_string(cert: dict[str, Any] | None) -> str:
    """An RFC 4514-style subject from ``SSLObject.getpeercert()``."""
    if not cert:
        return ""
    parts = []
    for rdn in reversed(cert.get("subject", ())):
        for key, value in rdn:
            short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
                     "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
                     "emailAddress": "emailAddress", "domainComponent": "DC"}.get(key, key)
            escaped = value.replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
            parts.append(f"{short}={escaped}")
    return ",".join(parts)


# --------------------------------------------------------------------------
# SNI from a ClientHello, for routing TLS in TCP mode without terminating it
# --------------------------------------------------------------------------

NEED_MORE = "need-more"


def client_hello_sni(data: bytes) -> str | None:
    """The server name of a TLS ClientHello at the start of ``data``.

    Returns :data:`NEED_MORE` while the ClientHello is incomplete, ``None`` when
    the data is not a ClientHello or carries no server name.
    """
    if len(data) < 5:
        return NEED_MORE if not data or data[0] == 0x16 else None
    if data[0] != 0x16 or data[1] != 0x03:
        return None
    record_len = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + record_len:
        # A ClientHello may span records; one record is the overwhelming case.
        return NEED_MORE if 5 + record_len <= 16384 + 5 else None
    body = data[5 : 5 + record_len]
    if len(body) < 4 or body[0] != 0x01:
        return None
    hs_len = int.from_bytes(body[1:4], "big")
    hello = body[4 : 4 + hs_len]
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        if pos + 2 > len(hello):
            return None
        end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            ext_type = int.from_bytes(hello[pos : pos + 2], "big")
            ext_len = int.from_bytes(hello[pos + 2 : pos + 4], "big")
            ext = hello[pos + 4 : pos + 4 + ext_len]
            pos += 4 + ext_len
            if ext_type != 0:
                continue
            # server_name_list: u16 length, then (u8 type, u16 length, name)*
            p = 2
            while p + 3 <= len(ext):
                name_type = ext[p]
                name_len = int.from_bytes(ext[p + 1 : p + 3], "big")
                name = ext[p + 3 : p + 3 + name_len]
                p += 3 + name_len
                if name_type == 0:
                    return name.decode("ascii", "replace").lower().rstrip(".")
            return None
    except IndexError:
        return None
    return None
