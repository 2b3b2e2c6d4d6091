"""TCP mode through the real proxy: relay, half-close both ways, balancing, retries,
timeouts, maxconn and the tcplog access line."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from typing import Any

import pytest
from proxytest.client import read_until_close
from proxytest.configs import http_config, server
from proxytest.proxy import free_port

TCPLOG = re.compile(
    r"^(?P<client>127\.0\.0\.\d+:\d+) \[(?P<date>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}\.\d{3})\] "
    r"(?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) "
    r"(?P<Tw>-?\d+)/(?P<Tc>-?\d+)/(?P<Tt>\d+) (?P<bytes>\d+) (?P<term>[-\w]{2}) "
    r"(?P<actconn>\d+)/(?P<feconn>\d+)/(?P<beconn>\d+)/(?P<srvconn>\d+)/(?P<retries>\d+) "
    r"(?P<srvqueue>\d+)/(?P<bkqueue>\d+)$"
)


def tcp_config(port: int, servers: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return http_config(port, servers, mode="tcp", **kw)


def dial(port: int, source: str | None = None, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


def recv_exact(s: socket.socket, n: int, timeout: float = 10) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(min(1 << 18, n - len(out)))
        if not data:
            break
        out += data
    return bytes(out)


def test_relay_echo(proxy: Any, backend: Any, port: Any) -> None:
    e = backend.tcp("e")
    p = proxy(tcp_config(port(), [server("e", e)]))
    with dial(p.port()) as s:
        for msg in (b"ping\n", b"x" * 100000, bytes(range(256)) * 64):
            s.sendall(msg)
            assert recv_exact(s, len(msg)) == msg


def test_relay_large_bidirectional_stream(proxy: Any, backend: Any, port: Any) -> None:
    """8 MiB each way at once: backpressure on both sides, nothing lost or reordered."""
    e = backend.tcp("e")
    p = proxy(tcp_config(port(), [server("e", e)]))
    size = 8 << 20
    data = bytes(range(256)) * (size // 256)
    with dial(p.port()) as s:
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        got = recv_exact(s, size, timeout=60)
        sender.join(30)
    assert got == data


def test_client_half_close_reaches_the_server(proxy: Any, backend: Any, port: Any) -> None:
    e = backend.tcp("e")
    p = proxy(tcp_config(port(), [server("e", e)]))
    with dial(p.port()) as s:
        s.sendall(b"request body")
        s.shutdown(socket.SHUT_WR)  # the client is done sending, still reading
        data, closed = read_until_close(s, 5)
    # The server saw the FIN, answered after it, then closed: the client got both.
    assert data == b"request bodyEOF e 12\n" and closed
    assert e.connections[0].eof


def test_server_half_close_reaches_the_client(proxy: Any, backend: Any, port: Any) -> None:
    f = backend.tcp("f", "server-first")
    p = proxy(tcp_config(port(), [server("f", f)]))
    with dial(p.port()) as s:
        s.settimeout(5)
        assert recv_exact(s, len(b"hello f\n")) == b"hello f\n"
        assert s.recv(100) == b""  # the server's FIN, passed on
        # The other direction is still open: the server still receives.
        s.sendall(b"late data after the server's FIN")
        assert f.wait_for(lambda: f.total_bytes == 32, 5)
        s.shutdown(socket.SHUT_WR)
        assert f.wait_for(lambda: f.connections[0].eof, 5)
    assert bytes(f.connections[0].data) == b"late data after the server's FIN"


def test_server_greeting_is_never_lost(proxy: Any, backend: Any, port: Any) -> None:
    """Server-first protocols (SMTP, MySQL): the greeting, and even the server's FIN, may
    arrive before the proxy has finished setting up the server connection."""
    f = backend.tcp("f", "server-first")
    p = proxy(tcp_config(port(), [server("f", f)]))
    for _ in range(40):
        with dial(p.port()) as s:
            s.shutdown(socket.SHUT_WR)
            data, closed = read_until_close(s, 5)
            assert (data, closed) == (b"hello f\n", True)


def test_tcp_connection_ends_when_both_sides_closed(proxy: Any, backend: Any, port: Any) -> None:
    f = backend.tcp("f", "server-first")
    p = proxy(tcp_config(port(), [server("f", f)]))
    s = dial(p.port())
    assert recv_exact(s, 8) == b"hello f\n"
    s.shutdown(socket.SHUT_WR)
    _data, closed = read_until_close(s, 5)
    s.close()
    assert closed
    line = p.wait_log(1)[0]
    m = TCPLOG.match(line)
    assert m, line
    assert m["term"] == "--" and m["bytes"] == "8" and m["server"] == "f"


@pytest.mark.parametrize("algorithm", ["roundrobin", "static-rr", "leastconn", "random", "first"])
def test_tcp_balancing(proxy: Any, backend: Any, port: Any, algorithm: str) -> None:
    a, b = backend.tcp("a", "sink"), backend.tcp("b", "sink")
    p = proxy(tcp_config(port(), [server("a", a, weight=3), server("b", b, weight=1)], balance=algorithm))
    seen: Counter[str] = Counter()
    for _ in range(80):
        with dial(p.port()) as s:
            s.shutdown(socket.SHUT_WR)
            data, _ = read_until_close(s, 5)
            seen[data.split()[1].decode()] += 1
    if algorithm in ("roundrobin", "static-rr"):
        assert seen == {"a": 60, "b": 20}
    elif algorithm == "random":
        assert 48 <= seen["a"] <= 72, seen
    elif algorithm == "first":
        assert seen == {"a": 80}
    else:  # leastconn with sequential connections: ties in round-robin order
        assert seen == {"a": 40, "b": 40}


def test_tcp_source_balancing_is_sticky(proxy: Any, backend: Any, port: Any) -> None:
    bs = [backend.tcp(f"s{i}", "sink") for i in range(3)]
    p = proxy(tcp_config(port(), [server(f"s{i}", b) for i, b in enumerate(bs)], balance="source",
                         backend={"hash_type": "consistent"}))
    where: dict[str, set[str]] = {}
    for i in range(2, 30):
        for _ in range(2):
            with dial(p.port(), source=f"127.0.0.{i}") as s:
                s.shutdown(socket.SHUT_WR)
                data, _ = read_until_close(s, 5)
            where.setdefault(f"127.0.0.{i}", set()).add(data.split()[1].decode())
    assert all(len(v) == 1 for v in where.values())
    assert len({next(iter(v)) for v in where.values()}) == 3


def test_tcp_retries_and_redispatch(proxy: Any, backend: Any, port: Any) -> None:
    b = backend.tcp("b")
    p = proxy(tcp_config(port(), [server("dead", f"127.0.0.1:{free_port()}"), server("b", b)],
                         defaults={"retries": 2}))
    for i in range(4):
        with dial(p.port()) as s:
            s.sendall(b"hi %d" % i)
            assert recv_exact(s, 4) == b"hi %d" % i
    assert b.conn_count == 4


def test_tcp_all_servers_refused_closes_the_client(proxy: Any, port: Any) -> None:
    p = proxy(tcp_config(port(), [server("d1", f"127.0.0.1:{free_port()}")], defaults={"retries": 2}))
    with dial(p.port()) as s:
        s.sendall(b"anyone?")
        t0 = time.monotonic()
        data, closed = read_until_close(s, 5)
    assert data == b"" and closed and time.monotonic() - t0 < 3
    m = TCPLOG.match(p.wait_log(1)[0])
    assert m and m["term"] == "SC" and m["retries"] == "2", p.log_lines()


def test_tcp_data_sent_before_the_server_connects_is_kept(proxy: Any, backend: Any, port: Any) -> None:
    """The client talks first, while the proxy is still retrying: nothing is lost."""
    b = backend.tcp("b")
    p = proxy(tcp_config(port(), [server("dead", f"127.0.0.1:{free_port()}"), server("b", b)],
                         defaults={"retries": 3}))
    payload = b"early bytes " * 1000
    with dial(p.port()) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data, closed = read_until_close(s, 10)
    assert data == payload + f"EOF b {len(payload)}\n".encode() and closed


def test_tcp_idle_timeout(proxy: Any, backend: Any, port: Any) -> None:
    e = backend.tcp("e")
    p = proxy(tcp_config(port(), [server("e", e)], defaults={"timeouts": {"client": "500ms", "server": "500ms"}}))
    with dial(p.port()) as s:
        s.sendall(b"x")
        assert recv_exact(s, 1) == b"x"
        t0 = time.monotonic()
        _data, closed = read_until_close(s, 5)
        assert closed and 0.3 < time.monotonic() - t0 < 3
    assert e.wait_for(lambda: not e.open_connections(), 3)
    m = TCPLOG.match(p.wait_log(1)[0])
    assert m and m["term"] == "cD"


def test_tcp_frontend_maxconn_waits(proxy: Any, backend: Any, port: Any) -> None:
    e = backend.tcp("e")
    p = proxy(tcp_config(port(), [server("e", e)], frontend={"maxconn": 1, "backlog": 8}))
    first = dial(p.port())
    first.sendall(b"1")
    assert recv_exact(first, 1) == b"1"
    second = dial(p.port())  # accepted by the kernel, not served yet
    second.sendall(b"2")
    second.settimeout(0.5)
    with pytest.raises(TimeoutError):
        second.recv(1)
    assert e.conn_count == 1
    first.close()
    second.settimeout(5)
    assert second.recv(1) == b"2"
    second.close()
    assert e.conn_count == 2


def test_tcp_access_log_line(proxy: Any, backend: Any, port: Any) -> None:
    e = backend.tcp("e")
    p = proxy(tcp_config(port(), [server("e", e)]))
    with dial(p.port()) as s:
        s.sendall(b"12345")
        assert recv_exact(s, 5) == b"12345"
        time.sleep(0.2)
        s.shutdown(socket.SHUT_WR)
        read_until_close(s, 5)
    m = TCPLOG.match(p.wait_log(1)[0])
    assert m, p.log_lines()
    assert (m["frontend"], m["backend"], m["server"]) == ("fe", "be", "e")
    assert int(m["Tw"]) >= 0 and int(m["Tc"]) >= 0 and int(m["Tt"]) >= 200
    assert int(m["bytes"]) == 5 + len(b"EOF e 5\n")
    assert m["term"] == "--"
