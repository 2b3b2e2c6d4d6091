"""100 MiB bodies streamed through the proxy with bounded memory: the proxy's RSS
(/proc/PID/status VmRSS) may not grow by more than 50 MiB while a peer stalls."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from proxytest.backend import pattern, pattern_digest
from proxytest.client import Client, ResponseReader, connect, request
from proxytest.configs import http_config, server

pytestmark = pytest.mark.slow

SIZE = 100 << 20
MAX_GROWTH_KIB = 50 << 10


class RssSampler:
    """Samples a process's RSS every 20 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.baseline = proxy.rss_kib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proxy.rss_kib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def warm(p: Any) -> None:
    """Load every code path once so that the baseline RSS is the steady state."""
    with Client(p.port()) as c:
        c.request("POST", "/warm", body=b"w" * 300000)
        c.request("GET", "/warm?mode=large&size=3M")
        c.request("GET", "/warm?mode=chunked&size=3M")


def test_100mib_request_body_streams_with_bounded_memory(proxy: Any, backend: Any, port: Any) -> None:
    # The server stops reading for 1.5 s after 10 MiB: the proxy must stop reading the client.
    b = backend("b", stall_after="10M", stall="1.5")
    p = proxy(http_config(port(), [server("b", b)]))
    warm(p)
    t0 = time.monotonic()
    with RssSampler(p) as rss, connect(p.port(), timeout=60) as s:
        s.sendall(request("POST", "/upload", headers=[("Content-Length", str(SIZE))]))
        for piece in pattern(SIZE):
            s.sendall(piece)
        r = ResponseReader(s).read_one(timeout=60)
    elapsed = time.monotonic() - t0
    assert r.status == 200
    assert int(r.header("X-Body-Length")) == SIZE
    assert r.header("X-Body-Sha256") == pattern_digest(SIZE)
    assert elapsed >= 1.4  # the stall really happened
    assert rss.growth < MAX_GROWTH_KIB, f"RSS grew by {rss.growth} KiB (baseline {rss.baseline} KiB)"


def test_100mib_chunked_request_body(proxy: Any, backend: Any, port: Any) -> None:
    b = backend("b", stall_after="20M", stall="1")
    p = proxy(http_config(port(), [server("b", b)]))
    warm(p)
    with RssSampler(p) as rss, connect(p.port(), timeout=60) as s:
        s.sendall(request("POST", "/chunked-upload", headers=[("Transfer-Encoding", "chunked")]))
        for piece in pattern(SIZE, 200000):
            s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        r = ResponseReader(s).read_one(timeout=60)
    assert r.status == 200 and int(r.header("X-Body-Length")) == SIZE
    assert r.header("X-Body-Sha256") == pattern_digest(SIZE)
    assert rss.growth < MAX_GROWTH_KIB, f"RSS grew by {rss.growth} KiB (baseline {rss.baseline} KiB)"


@pytest.mark.parametrize("mode", ["large", "chunked"])
def test_100mib_response_body_streams_with_bounded_memory(proxy: Any, backend: Any, port: Any, mode: str) -> None:
    b = backend("b")
    p = proxy(http_config(port(), [server("b", b)]))
    warm(p)
    with RssSampler(p) as rss, connect(p.port(), timeout=60) as s:
        s.sendall(request("GET", f"/download?mode={mode}&size={SIZE}"))
        reader = ResponseReader(s, keep_body=False)
        # Read 10 MiB, then stall for 1.5 s: the server keeps writing, the proxy must not buffer.
        deadline = time.monotonic() + 30
        while (reader.cur is None or reader.cur.body_len < 10 << 20) and time.monotonic() < deadline:
            data = s.recv(1 << 18)
            assert data, "closed early"
            reader.feed(data)
        time.sleep(1.5)
        stalled_peak = rss.peak
        r = reader.read_one(timeout=60)
    assert r.status == 200 and r.body_len == SIZE and r.body_sha256 == pattern_digest(SIZE)
    assert stalled_peak - rss.baseline < MAX_GROWTH_KIB
    assert rss.growth < MAX_GROWTH_KIB, f"RSS grew by {rss.growth} KiB (baseline {rss.baseline} KiB)"
