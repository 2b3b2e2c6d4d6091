"""TLS termination, SNI, ALPN, mTLS, re-encryption, SNI passthrough, reload, redirect.

Certificates come from a throw-away CA (trustme) made per test module.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from proxytest.backend import Backend
from proxytest.client import get
from proxytest.proxy import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    other_ca = trustme.CA()
    client_ca = trustme.CA()
    out: dict[str, Any] = {"dir": d, "ca": ca, "client_ca": client_ca}
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(d / "other-ca.pem"))
    client_ca.cert_pem.write_to_path(str(d / "client-ca.pem"))
    (d / "certs").mkdir()
    for name, hosts in {"a": ["site-a.test"], "b": ["site-b.test"], "c": ["site-c.test"],
                        "w": ["*.wild.test"]}.items():
        cert = ca.issue_cert(*hosts)
        path = d / (f"{name}.pem" if name == "a" else f"certs/{name}.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    ca.issue_cert("site-a.test", organization_unit_name="renewed") \
        .private_key_and_cert_chain_pem.write_to_path(str(d / "a-renewed.pem"))
    ca.issue_cert("app.internal").private_key_and_cert_chain_pem.write_to_path(str(d / "backend.pem"))
    client = client_ca.issue_cert("client.test", common_name="client.test")
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    rogue = trustme.CA().issue_cert("client.test")
    rogue.private_key_and_cert_chain_pem.write_to_path(str(d / "rogue-client.pem"))
    return out


def _client_ctx(pki: dict[str, Any], alpn: list[str] | None = None, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert:
        ctx.load_cert_chain(str(pki["dir"] / cert))
    return ctx


def _handshake(port: int, name: str, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=name)


def _https_get(port: int, name: str, ctx: ssl.SSLContext, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    s = _handshake(port, name, ctx)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data:
        # TLS 1.3: a refused client certificate shows after the client's handshake.
        raise ConnectionResetError("closed without a response")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def _ou(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    assert cert is not None
    for rdn in cert["subject"]:
        for k, v in rdn:
            if k == "organizationalUnitName":
                return v
    return ""


def _sans(sock: ssl.SSLSocket) -> list[str]:
    cert = sock.getpeercert()
    assert cert is not None
    return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


def _tls_frontend(pki: dict[str, Any], **tls: Any) -> tuple[dict[str, Any], int, int]:
    d = pki["dir"]
    plain, secure = free_port(), free_port()
    tls_cfg = {"certificates": [str(d / "a.pem"), str(d / "certs")], "default_certificate": str(d / "a.pem")}
    tls_cfg.update(tls)
    fe = {
        "name": "web",
        "bind": [f"127.0.0.1:{plain}", {"address": f"127.0.0.1:{secure}", "tls": tls_cfg}],
        "default_backend": "app",
    }
    return fe, plain, secure


def _config(fe: dict[str, Any], backend: Backend, tmp: Path | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "global": {"log": {"access": "stdout"}},
        "frontends": [fe],
        "backends": [{"name": "app", "servers": [{"name": "s1", "address": backend.address}]}],
    }
    if tmp is not None:
        doc["global"]["admin"] = {"socket": str(tmp / "admin.sock")}
    doc.update(extra)
    return doc


# --------------------------------------------------------------------------


def test_sni_selects_the_matching_certificate_wildcards_included(pki: dict[str, Any], proxy: Any,
                                                                 backend: Any) -> None:
    be = backend("s1")
    fe, _, port = _tls_frontend(pki)
    proxy(_config(fe, be))
    ctx = _client_ctx(pki)
    for name, expected in [("site-a.test", ["site-a.test"]), ("site-b.test", ["site-b.test"]),
                           ("site-c.test", ["site-c.test"]), ("x.wild.test", ["*.wild.test"]),
                           ("deep.x.wild.test", None)]:
        if expected is None:
            # A wildcard covers one label: the default certificate answers, and
            # the client rejects it for that name.
            with pytest.raises(ssl.SSLCertVerificationError):
                _handshake(port, name, ctx)
            continue
        with _handshake(port, name, ctx) as s:
            assert _sans(s) == expected
    status, _headers, body = _https_get(port, "site-b.test", ctx)
    assert status == 200 and body.startswith(b"s1 GET /")
    req = be.requests[-1]
    assert req.header("X-Forwarded-Proto") == "https"


def test_closing_tls_connections_logs_nothing(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    """Connections closed by the proxy (Connection: close) or half-closed by the client end
    quietly: uvloop warns on every one whose protocol asks to stay open after EOF under TLS."""
    fe, _, port = _tls_frontend(pki)
    p = proxy(_config(fe, backend("s1")))
    ctx = _client_ctx(pki)
    for _ in range(5):
        assert _https_get(port, "site-a.test", ctx)[0] == 200
    with _handshake(port, "site-a.test", ctx) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: site-a.test\r\n\r\n")
        s.unwrap().shutdown(socket.SHUT_WR)  # close_notify, then FIN, before the response
    time.sleep(0.3)
    noise = [line for line in p.stderr().splitlines() if "WARNING" in line or "ERROR" in line]
    assert not noise, noise


def test_unknown_name_gets_the_default_certificate(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    fe, _, port = _tls_frontend(pki)
    proxy(_config(fe, backend("s1")))
    ctx = _client_ctx(pki)
    ctx.check_hostname = False
    with _handshake(port, "nowhere.test", ctx) as s:
        assert _sans(s) == ["site-a.test"]


def test_strict_sni_refuses_an_unknown_name(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    fe, _, port = _tls_frontend(pki, strict_sni=True)
    p = proxy(_config(fe, backend("s1")))
    ctx = _client_ctx(pki)
    ctx.check_hostname = False
    with pytest.raises(ssl.SSLError) as info:
        _handshake(port, "nowhere.test", ctx)
    # OpenSSL queues an unrecognized_name alert; the event loop may close before
    # flushing it, which the client sees as an EOF during the handshake.
    assert "UNRECOGNIZED_NAME" in str(info.value).upper() or isinstance(info.value, ssl.SSLEOFError)
    with _handshake(port, "site-c.test", _client_ctx(pki)) as s:
        assert _sans(s) == ["site-c.test"]
    p.wait_log(lambda lines: True, timeout=0)


def test_tls_1_1_is_refused_and_1_2_accepted(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    fe, _, port = _tls_frontend(pki)
    proxy(_config(fe, backend("s1")))

    def old_client() -> ssl.SSLContext:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        return ctx

    # The client can speak TLS 1.1: prove it against a local server that allows it.
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        srv_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    srv_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    srv_ctx.load_cert_chain(str(pki["dir"] / "a.pem"))
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    versions: list[str] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        try:
            with srv_ctx.wrap_socket(conn, server_side=True) as tls:
                versions.append(str(tls.version()))
        except ssl.SSLError as exc:
            versions.append(f"error {exc}")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with old_client().wrap_socket(socket.create_connection(lsock.getsockname(), timeout=5)) as s:
            local = s.version()
    except ssl.SSLError:
        local = None
    t.join(5)
    lsock.close()
    if local != "TLSv1.1":
        pytest.skip(f"this OpenSSL cannot negotiate TLS 1.1 even locally ({versions})")

    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        old_client().wrap_socket(raw).close()
    raw.close()
    ctx = _client_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with _handshake(port, "site-a.test", ctx) as s:
        assert s.version() == "TLSv1.2"
        assert "GCM" in s.cipher()[0] or "CHACHA20" in s.cipher()[0]


def test_alpn(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    fe, _, port = _tls_frontend(pki)
    proxy(_config(fe, backend("s1")))
    with _handshake(port, "site-a.test", _client_ctx(pki, alpn=["h2", "http/1.1"])) as s:
        assert s.selected_alpn_protocol() == "http/1.1"


def test_mutual_tls_required(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    be = backend("s1")
    fe, _, port = _tls_frontend(pki, client_ca=str(pki["dir"] / "client-ca.pem"), verify_client="required",
                                client_subject_header="X-Client-Subject")
    proxy(_config(fe, be))
    # A certificate from the client CA: accepted, its subject reaches the backend.
    status, _, _ = _https_get(port, "site-a.test", _client_ctx(pki, cert="client.pem"))
    assert status == 200
    assert "CN=client.test" in (be.requests[-1].header("X-Client-Subject") or "")
    # A client cannot forge the header.
    s = _handshake(port, "site-a.test", _client_ctx(pki, cert="client.pem"))
    s.sendall(b"GET /forge HTTP/1.1\r\nHost: site-a.test\r\nX-Client-Subject: CN=admin\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
    assert be.requests[-1].header_all("X-Client-Subject") == [be.requests[-2].header("X-Client-Subject")]
    # No certificate, or one from another CA: refused.
    for cert in (None, "rogue-client.pem"):
        before = len(be.requests)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _https_get(port, "site-a.test", _client_ctx(pki, cert=cert))
        assert len(be.requests) == before


def test_http_on_the_tls_port_is_counted_and_harmless(pki: dict[str, Any], proxy: Any, backend: Any,
                                                     tmp_path: Path) -> None:
    be = backend("s1")
    fe, plain, port = _tls_frontend(pki)
    p = proxy(_config(fe, be, tmp_path))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            assert s.recv(1024) in (b"",) or True
    assert be.requests == []
    deadline = time.monotonic() + 5
    while "TLS handshake(s) failed" not in p.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "TLS handshake(s) failed" in p.stderr()
    # Still serving, plain and TLS.
    assert get(plain, "/").status == 200
    assert _https_get(port, "site-a.test", _client_ctx(pki))[0] == 200
    from fleetproxy.adminclient import AdminClient

    deadline = time.monotonic() + 3
    while True:
        _, fes = AdminClient(str(tmp_path / "admin.sock")).request("GET", "/v1/frontends")
        if fes[0]["tls_handshake_failures"] >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert fes[0]["tls_handshake_failures"] >= 3


def test_redirect_to_https_and_hsts(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    be = backend("s1")
    fe, plain, port = _tls_frontend(pki)
    fe["redirect_to_https"] = True
    fe["hsts"] = {"max_age": 600, "include_subdomains": True}
    proxy(_config(fe, be))
    conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=5)
    conn.request("GET", "/path?q=1", headers={"Host": "site-a.test"})
    r = conn.getresponse()
    r.read()
    assert r.status == 301 and r.getheader("Location") == f"https://site-a.test:{port}/path?q=1"
    conn.request("POST", "/form", body=b"x=1", headers={"Host": "site-a.test"})
    r = conn.getresponse()
    r.read()
    assert r.status == 308
    conn.close()
    assert be.requests == []
    status, headers, _ = _https_get(port, "site-a.test", _client_ctx(pki))
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=600; includeSubDomains"


# --------------------------------------------------------------------------
# TLS towards servers
# --------------------------------------------------------------------------


class TlsBackend:
    """A small HTTPS server (threaded, stdlib) that names itself in its answers."""

    def __init__(self, cert: Path, name: str = "tls-backend") -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.name = name
        self.requests = 0
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda obj, server_name, ctx: self.sni.append(server_name)
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        tls.settimeout(10)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                body = f"{self.name} {head.split(b' ')[1].decode()}\n".encode()
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                if b"\r\nconnection: close" in head.lower():
                    return
        except OSError:
            pass
        finally:
            tls.close()

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


@pytest.fixture
def tls_backend(pki: dict[str, Any]) -> Iterator[TlsBackend]:
    b = TlsBackend(pki["dir"] / "backend.pem")
    yield b
    b.stop()


def _reencrypt_config(pki: dict[str, Any], b: TlsBackend, ca: str, check: bool = False) -> tuple[dict[str, Any], int]:
    port = free_port()
    srv: dict[str, Any] = {"name": "secure", "address": f"127.0.0.1:{b.port}",
                           "tls": {"verify": "required", "ca_file": str(pki["dir"] / ca), "sni": "app.internal"}}
    if check:
        srv.update({"check": True, "inter": "300ms"})
    doc = {
        "global": {"log": {"access": "stdout"}},
        "defaults": {"retries": 1, "timeouts": {"connect": "2s"}},
        "frontends": [{"name": "fe", "bind": [f"127.0.0.1:{port}"], "default_backend": "secure_back"}],
        "backends": [{"name": "secure_back", "servers": [srv]}],
    }
    return doc, port


def test_reencryption_verifies_the_server(pki: dict[str, Any], proxy: Any, tls_backend: TlsBackend) -> None:
    doc, port = _reencrypt_config(pki, tls_backend, "ca.pem")
    proxy(doc)
    r = get(port, "/hello")
    assert r.status == 200 and r.body == b"tls-backend /hello\n"
    assert tls_backend.sni[-1] == "app.internal"
    # The connection is reused: a second request needs no new handshake.
    handshakes = len(tls_backend.sni)
    from proxytest.client import ResponseReader, connect, request

    s = connect(port)
    reader = ResponseReader(s)
    for i in range(3):
        s.sendall(request("GET", f"/k{i}"))
        assert reader.read_one().status == 200
    s.close()
    assert len(tls_backend.sni) <= handshakes + 1


def test_reencryption_with_a_wrong_ca_is_a_503_not_plaintext(pki: dict[str, Any], proxy: Any,
                                                             tls_backend: TlsBackend) -> None:
    doc, port = _reencrypt_config(pki, tls_backend, "other-ca.pem")
    proxy(doc)
    r = get(port, "/hello")
    assert r.status == 503
    assert tls_backend.requests == 0


def test_health_checks_over_tls(pki: dict[str, Any], proxy: Any, tls_backend: TlsBackend, tmp_path: Path) -> None:
    doc, port = _reencrypt_config(pki, tls_backend, "ca.pem", check=True)
    doc["global"]["admin"] = {"socket": str(tmp_path / "admin.sock")}
    proxy(doc)
    from fleetproxy.adminclient import AdminClient

    client = AdminClient(str(tmp_path / "admin.sock"))
    deadline = time.monotonic() + 5
    while True:
        _, srv = client.request("GET", "/v1/backends/secure_back/servers/secure")
        if srv["health"] == "up" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert srv["health"] == "up" and srv["check"]["status"] == "L4OK"
    assert get(port, "/").status == 200


# --------------------------------------------------------------------------
# SNI passthrough (TCP mode, no termination)
# --------------------------------------------------------------------------


def test_sni_passthrough_routes_without_terminating(pki: dict[str, Any], proxy: Any, backend: Any) -> None:
    d = pki["dir"]
    a = TlsBackend(d / "a.pem", "site-a")
    b = TlsBackend(d / "certs" / "b.pem", "site-b")
    try:
        port = free_port()
        doc = {
            "global": {"log": {"access": "stdout"}},
            "frontends": [{
                "name": "tls_in", "mode": "tcp", "bind": [f"127.0.0.1:{port}"],
                "rules": [{"if": {"sni": "site-b.test"}, "use_backend": "b"},
                          {"if": {"sni": "*.wild.test"}, "use_backend": "b"}],
                "default_backend": "a",
            }],
            "backends": [
                {"name": "a", "mode": "tcp", "servers": [{"name": "a1", "address": f"127.0.0.1:{a.port}"}]},
                {"name": "b", "mode": "tcp", "servers": [{"name": "b1", "address": f"127.0.0.1:{b.port}"}]},
            ],
        }
        proxy(doc)
        ctx = _client_ctx(pki)
        assert _https_get(port, "site-b.test", ctx)[2] == b"site-b /\n"
        assert _https_get(port, "site-a.test", ctx)[2] == b"site-a /\n"
        # The proxy did not terminate: the backends saw the client's own server name.
        assert "site-b.test" in b.sni and "site-a.test" in a.sni
    finally:
        a.stop()
        b.stop()


# --------------------------------------------------------------------------
# Certificates: validation and reload
# --------------------------------------------------------------------------


def test_bad_certificates_are_config_errors_with_their_path(pki: dict[str, Any], tmp_path: Path) -> None:
    from fleetproxy.config import ConfigError, parse

    d = pki["dir"]
    # A certificate whose key belongs to another certificate.
    a = (d / "a.pem").read_text()
    b = (d / "certs" / "b.pem").read_text()
    begin = a.index("-----BEGIN")  # the key comes first in trustme's combined files
    key_a = a[begin:a.index("-----BEGIN CERTIFICATE-----")]
    cert_b = b[b.index("-----BEGIN CERTIFICATE-----"):]
    mismatched = tmp_path / "mismatch.pem"
    mismatched.write_text(key_a + cert_b)
    unreadable = tmp_path / "missing.pem"
    doc = {
        "frontends": [{"name": "fe", "bind": [{"address": "127.0.0.1:8443", "tls": {
            "certificates": [str(mismatched), str(unreadable)]}}], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [{"name": "s", "address": "127.0.0.1:9"}]}],
    }
    with pytest.raises(ConfigError) as info:
        parse(doc)
    lines = info.value.lines()
    assert any(line.startswith("frontends[0].bind[0].tls.certificates[0]:") and "does not match" in line
               for line in lines), lines
    assert any(line.startswith("frontends[0].bind[0].tls.certificates[1]:") and "no such file" in line
               for line in lines), lines


def test_certificate_reload_keeps_downloads_and_serves_the_new_one(pki: dict[str, Any], proxy: Any,
                                                                  backend: Any, tmp_path: Path) -> None:
    d = pki["dir"]
    live = tmp_path / "live.pem"
    live.write_bytes((d / "a.pem").read_bytes())
    be = backend("s1", mode="large")
    port = free_port()
    doc = {
        "global": {"log": {"access": "stdout"}, "admin": {"socket": str(tmp_path / "admin.sock")}},
        "frontends": [{"name": "web", "bind": [{"address": f"127.0.0.1:{port}",
                                                "tls": {"certificates": [str(live)]}}],
                       "default_backend": "app"}],
        "backends": [{"name": "app", "servers": [{"name": "s1", "address": be.address}]}],
    }
    proxy(doc)
    ctx = _client_ctx(pki)
    size = 32 * 1024 * 1024
    s = _handshake(port, "site-a.test", ctx)
    assert _ou(s) != "renewed"
    s.sendall(f"GET /big?size={size} HTTP/1.1\r\nHost: site-a.test\r\n\r\n".encode())
    got = s.recv(65536)  # the download has started
    assert got.startswith(b"HTTP/1.1 200")

    # Renew the certificate and reload while the download is in flight.
    live.write_bytes((d / "a-renewed.pem").read_bytes())
    from fleetproxy.adminclient import AdminClient

    status, body = AdminClient(str(tmp_path / "admin.sock"), timeout=30).request("POST", "/v1/reload")
    assert status == 200, body
    with _handshake(port, "site-a.test", ctx) as s2:
        assert _ou(s2) == "renewed"

    # The old download completes over the old connection.
    _head, _, rest = got.partition(b"\r\n\r\n")
    total = len(rest)
    s.settimeout(30)
    while total < size:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        total += len(chunk)
    s.close()
    assert total == size


def test_reload_with_a_broken_certificate_keeps_the_old_one(pki: dict[str, Any], proxy: Any, backend: Any,
                                                           tmp_path: Path) -> None:
    d = pki["dir"]
    live = tmp_path / "live.pem"
    live.write_bytes((d / "a.pem").read_bytes())
    port = free_port()
    doc = {
        "global": {"admin": {"socket": str(tmp_path / "admin.sock")}},
        "frontends": [{"name": "web", "bind": [{"address": f"127.0.0.1:{port}",
                                                "tls": {"certificates": [str(live)]}}],
                       "default_backend": "app"}],
        "backends": [{"name": "app", "servers": [{"name": "s1", "address": backend("s1").address}]}],
    }
    p = proxy(doc)
    live.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    from fleetproxy.adminclient import AdminClient

    status, body = AdminClient(str(tmp_path / "admin.sock"), timeout=30).request("POST", "/v1/reload")
    assert status == 400
    assert any("frontends[0].bind[0].tls.certificates[0]" in e for e in body["errors"]), body
    assert _https_get(port, "site-a.test", _client_ctx(pki))[0] == 200
    # The refused reload is logged as an error by design; restore and stop cleanly.
    live.write_bytes((d / "a.pem").read_bytes())
    p.stop()
    p.returncode = 0


def test_config_dump_mentions_no_secret(pki: dict[str, Any]) -> None:
    """The JSON view of a bind never carries key material (only paths)."""
    from fleetproxy.config import parse

    d = pki["dir"]
    cfg = parse({
        "frontends": [{"name": "fe", "bind": [{"address": "127.0.0.1:8443", "tls": {
            "certificates": [str(d / "a.pem")]}}], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [{"name": "s", "address": "127.0.0.1:9"}]}],
    })
    dumped = json.dumps(cfg.model_dump(mode="json", by_alias=True))
    assert "PRIVATE KEY" not in dumped
