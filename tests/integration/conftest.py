"""Shared by the alert tests: a real local HTTP receiver for the webhooks, one per test module."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stack.servers import free_port


class Receiver:
    """Records every POST; a path may be told to answer 503 to its first N calls."""

    def __init__(self):
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

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
