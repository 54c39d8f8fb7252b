"""A real HTTP receiver for webhooks (VisionTrack's alert webhooks, Alertmanager's): records every POST,
and a path may be told to answer 503 to its first N calls."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stack.servers import free_port


class Receiver:
    """Listens on host:port (loopback and a free port by default) until shutdown()."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.calls: list[dict] = []
        self.fail_first: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    attempt = sum(1 for c in receiver.calls if c["path"] == self.path) + 1
                    failing = attempt <= receiver.fail_first.get(self.path, 0)
                    receiver.calls.append({"path": self.path, "body": body, "at": time.monotonic(),
                                           "status": 503 if failing else 200,
                                           "header": self.headers.get("X-VisionTrack-Alert")})
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.host, self.port = host, port or free_port()
        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def on(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
