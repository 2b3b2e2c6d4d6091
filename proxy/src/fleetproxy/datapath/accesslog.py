"""Access logs: one line per HTTP request or TCP connection, HAProxy's format.

HTTP lines follow ``option httplog``::

    127.0.0.1:40312 [26/Nov/2026:12:00:00.123] http_front http_back/server1 0/0/1/2/3 200 172 - - ---- 4/2/1/1/0 0/0 "GET / HTTP/1.1"

fields: client, accept date, frontend, backend/server, the timers TR/Tw/Tc/Tr/Ta
in milliseconds (-1 when the event did not happen), status, bytes sent to the
client, captured cookies (none), the termination state, connection counts
(process/frontend/backend/server/retries), queues (server/backend) and the
request line.  TCP lines follow ``option tcplog``: timers Tw/Tc/Tt, bytes,
termination state, counts and queues.

Lines are buffered and written in one system call every 100 ms (or every 256
lines), so logging costs a string format per request and no lock.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

FLUSH_LINES = 256
PIPE_BUF = 4096  # writes up to this size to a pipe are atomic (POSIX)
FLUSH_INTERVAL = 0.1


class AccessLog:
    def __init__(self, loop: Any, target: str, fmt: str = "httplog") -> None:
        self._loop = loop
        self.format = fmt
        self.enabled = target != "none"
        self._fd = -1
        self._owned = False
        if target == "stdout":
            self._fd = sys.stdout.fileno()
        elif target == "stderr":
            self._fd = sys.stderr.fileno()
        elif self.enabled:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._owned = True
        self._lines: list[str] = []
        self._scheduled = False
        self._second = -1
        self._date = ""
        self.dropped = 0

    def date(self, wall: float) -> str:
        """HAProxy's accept date, ``26/Nov/2026:12:00:00.123``, cached per second."""
        second = int(wall)
        if second != self._second:
            self._second = second
            self._date = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(second))
        return f"{self._date}.{int((wall - second) * 1000):03d}"

    def write(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= FLUSH_LINES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_later(FLUSH_INTERVAL, self._timed_flush)

    def _timed_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write the buffered lines in pieces of at most PIPE_BUF bytes cut at line
        ends, so that lines of several workers sharing a pipe never interleave."""
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines.clear()
        fd = self._fd
        try:
            while data:
                if len(data) <= PIPE_BUF:
                    piece, data = data, b""
                else:
                    cut = data.rfind(b"\n", 0, PIPE_BUF) + 1 or PIPE_BUF
                    piece, data = data[:cut], data[cut:]
                while piece:
                    piece = piece[os.write(fd, piece):]
        except OSError:
            self.dropped += 1

    def close(self) -> None:
        self.flush()
        if self._owned and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- formatting -----------------------------------------------------------

    def http(
        self,
        client: str,
        wall: float,
        frontend: str,
        target: str,
        tr: int,
        tw: int,
        tc: int,
        tresp: int,
        ta: int,
        status: int,
        nbytes: int,
        term: str,
        counts: str,
        queues: str,
        request: str,
    ) -> None:
        if self.format == "json":
            backend, _, server = target.partition("/")
            self.write(
                json.dumps(
                    {
                        "client": client,
                        "date": self.date(wall),
                        "frontend": frontend,
                        "backend": backend,
                        "server": server,
                        "TR": tr,
                        "Tw": tw,
                        "Tc": tc,
                        "Tr": tresp,
                        "Ta": ta,
                        "status": status,
                        "bytes": nbytes,
                        "termination": term,
                        "counts": counts,
                        "queues": queues,
                        "request": request,
                    }
                )
                + "\n"
            )
            return
        self.write(
            f"{client} [{self.date(wall)}] {frontend} {target} {tr}/{tw}/{tc}/{tresp}/{ta} "
            f"{status} {nbytes} - - {term}-- {counts} {queues} \"{request}\"\n"
        )

    def tcp(
        self,
        client: str,
        wall: float,
        frontend: str,
        target: str,
        tw: int,
        tc: int,
        tt: int,
        nbytes: int,
        term: str,
        counts: str,
        queues: str,
    ) -> None:
        if self.format == "json":
            backend, _, server = target.partition("/")
            self.write(
                json.dumps(
                    {
                        "client": client,
                        "date": self.date(wall),
                        "frontend": frontend,
                        "backend": backend,
                        "server": server,
                        "Tw": tw,
                        "Tc": tc,
                        "Tt": tt,
                        "bytes": nbytes,
                        "termination": term,
                        "counts": counts,
                        "queues": queues,
                    }
                )
                + "\n"
            )
            return
        self.write(
            f"{client} [{self.date(wall)}] {frontend} {target} {tw}/{tc}/{tt} {nbytes} {term} "
            f"{counts} {queues}\n"
        )
