"""A tiny fault-injecting HTTP proxy for S3 tests: it forwards each request to the real S3
server (rclone serve s3) unchanged (the Host header too, so signatures still verify) unless a
fault is queued for it: a 503 SlowDown, a 500, a 403, a reset connection, a silent wait, a
lost answer (the server did the request, the client sees a reset), or a short answer (the
server's headers, then half its body and a closed connection); "pass" forwards one request
unchanged (to aim the next fault at a later request)."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message></Error>'
FAULTS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error."),
    "403": (403, "AccessDenied", "Access Denied"),
}


class FaultyS3:
    """127.0.0.1:``port`` in front of ``upstream`` (host, port). ``queue`` faults for the next
    requests, or set ``always`` to fail every request; ``requests`` counts what arrived."""

    def __init__(self, upstream: tuple[str, int], hold_seconds: float = 5.0) -> None:
        self.upstream = upstream
        self.hold_seconds = hold_seconds
        self.queue: list[str] = []
        self.always: str | None = None
        self.after = 0
        """``always`` applies only once more than ``after`` requests arrived (a failure mid-copy)."""
        self.requests = 0
        self.only: str | None = None
        """Queued faults go only to requests whose ``METHOD /path?query`` contains this."""
        self.seen: list[str] = []
        """Every request's ``METHOD /path?query``, in the order they arrived."""
        self.on_lost: Callable[[], object] | None = None
        """Called after a "lost" request was done upstream, before the client sees the reset."""
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                line = f"{self.command} {self.path}"
                with proxy.lock:
                    proxy.requests += 1
                    proxy.seen.append(line)
                    always = proxy.always if proxy.requests > proxy.after else None
                    aimed = proxy.queue and (proxy.only is None or proxy.only in line)
                    fault = always or (proxy.queue.pop(0) if aimed else None)
                if fault == "pass":
                    fault = None
                if fault in ("reset", "lost"):
                    if fault == "lost":  # the server does it; its answer never arrives
                        self._forward(body)
                        if proxy.on_lost is not None:
                            proxy.on_lost()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault == "timeout":
                    time.sleep(proxy.hold_seconds)
                    self.close_connection = True
                    return
                if fault is not None and fault != "short":
                    status, code, msg = FAULTS[fault]
                    data = ERROR.format(code=code, msg=msg).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                resp, data = self._forward(body)
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length_header = resp.getheader("Content-Length")
                self.send_header(
                    "Content-Length",
                    length_header if self.command == "HEAD" and length_header else str(len(data)),
                )
                self.end_headers()
                if self.command != "HEAD":
                    if fault == "short" and data:
                        data = data[: len(data) // 2]
                        self.close_connection = True
                    self.wfile.write(data)

            def _forward(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    return resp, resp.read()
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
