"""The application the fleet scenarios and the demo put behind the proxies.

A small HTTP/1.1 server (Python's standard library only, so a backend host needs
nothing but python3) that names itself and its version in every answer:

    X-Served-By: server1
    X-App-Version: 1.0

    server1 1.0 /some/path

``GET /health`` answers 200 ``ok``. Keep-alive, one thread per connection.
Name and version come from the command line or from APP_NAME / APP_VERSION, so a
systemd unit can take them from an EnvironmentFile and an upgrade is "write a new
version, restart". SIGTERM stops it after the requests in progress.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleet-demo-app"
    # One segment per response, sent at once: head and body are buffered together and
    # flushed after the handler, without Nagle (which would hold a second small write
    # until the proxy's delayed ACK, 40 ms later).
    wbufsize = 65536
    disable_nagle_algorithm = True
    app_name = "app"
    app_version = "0"

    def _answer(self, with_body: bool) -> None:
        if self.path == "/health":
            body = b"ok\n"
        else:
            body = f"{self.app_name} {self.app_version} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", self.app_name)
        self.send_header("X-App-Version", self.app_version)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default=os.environ.get("APP_LISTEN", "0.0.0.0:80"), help="host:port")
    parser.add_argument("--name", default=os.environ.get("APP_NAME"), help="name in every answer")
    parser.add_argument("--app-version", default=os.environ.get("APP_VERSION", "1.0"), help="version in every answer")
    args = parser.parse_args(argv)
    if not args.name:
        parser.error("--name (or APP_NAME) is required")
    host, port = args.listen.rsplit(":", 1)
    handler = type("AppHandler", (Handler,), {"app_name": args.name, "app_version": args.app_version})
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler)
    # shutdown() must come from another thread than serve_forever().
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"{args.name} {args.app_version} listening on {args.listen}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
