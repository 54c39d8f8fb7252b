"""Shared by integration modules: a real local HTTP receiver for the webhooks, and a database of a module's own."""
from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import pytest

from stack.servers import free_port
from stack.services import Process


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


@contextlib.contextmanager
def own_database(postgres, base_env: dict, run_dir, prefix: str):
    """A migrated database of its own on the session's Postgres, with yesterday's and today's (UTC) telemetry
    partitions, dropped afterwards; yields its URL. For a module whose evaluator or aggregator must see only
    its own rows."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres.admin_url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    try:
        Process(f"migrate-{name}", "migrate", {**base_env, "DATABASE_URL": url},
                run_dir / "logs" / f"migrate-{name}.log").run_to_end(run_dir)
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn, conn.cursor() as cur:  # readings minutes old may fall in yesterday's partition
            cur.execute("SELECT vt_ensure_telemetry_partition(d::date) FROM generate_series("
                        "(now() AT TIME ZONE 'UTC') - interval '1 day', now() AT TIME ZONE 'UTC', interval '1 day') d")
        conn.close()
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()
