"""A static file server on 127.0.0.1 for the remote-shard tests, with faults on demand.

It serves one folder, honours ``Range: bytes=N-`` (206) unless told not to, and plays a
queue of faults per file name, one per request: ``503`` (an HTTP 503), ``reset`` (half the
body, then the socket closed without a word), ``truncate`` (a full Content-Length, half the
body). ``drop_every=N`` also resets every Nth request for a shard (``.tar``) that has no fault
queued. It counts requests per file and every fault it served.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Deque, Dict, List


class LoopbackServer:
    def __init__(self, root: Path, ranges: bool = True, drop_every: int = 0) -> None:
        self.root, self.ranges, self.drop_every = Path(root), ranges, drop_every
        self.faults: Dict[str, Deque[str]] = collections.defaultdict(collections.deque)
        self.requests: Dict[str, int] = collections.Counter()
        self.faults_served = 0
        self._plain_shard_requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.lstrip("/").split("?")[0]
                with server.lock:
                    server.requests[name] += 1
                    fault = server.faults[name].popleft() if server.faults[name] else None
                    if fault is None and server.drop_every and name.endswith(".tar"):
                        server._plain_shard_requests += 1
                        if server._plain_shard_requests % server.drop_every == 0:
                            fault = "reset"
                    server.faults_served += fault is not None
                path = server.root / name
                if fault == "503":
                    self.send_error(503, "try later")
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and server.ranges and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault in ("reset", "truncate"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if fault == "reset":  # RST instead of FIN
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def fail(self, name: str, *faults: str) -> None:
        with self.lock:
            self.faults[name].extend(faults)

    def count(self, name: str) -> int:
        with self.lock:
            return self.requests[name]

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A port nothing listens on (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__: List[str] = ["LoopbackServer", "free_port"]
