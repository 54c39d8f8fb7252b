"""/healthz and /readyz of an aggregator process (the Celery worker or beat), on its metrics port.

- GET /healthz: 200 {"status": "ok"} while the process serves (liveness).
- GET /readyz: 200 {"status": "ready"} when every dependency of the process answers, else 503 with the
  project's error shape and Retry-After (readiness). Each check opens its own connection, bounded by a
  short timeout, and closes it; concurrent probes share one check, and a result is reused for a second.
- Every other path goes to the Prometheus WSGI app unchanged (/metrics).
"""
from __future__ import annotations

import json
import logging
import select
import threading
import time
from socketserver import ThreadingMixIn
from typing import Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg2
import psycopg2.extensions
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("aggregator.health")

CHECK_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = 5
PATHS = ("/healthz", "/readyz")


def postgres_answers(url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """Connect and run SELECT 1 within `timeout` seconds in all (asynchronous libpq, so a server that
    accepts and then hangs cannot hold the check); raise when Postgres does not answer."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(url, async_=True, application_name="visiontrack-aggregator-readyz")
    try:
        _wait(conn, deadline)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        _wait(conn, deadline)
        cur.fetchone()
    finally:
        conn.close()


def _wait(conn, deadline: float) -> None:
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer in time")
        fd = conn.fileno()
        reading = state == psycopg2.extensions.POLL_READ
        select.select([fd] if reading else [], [] if reading else [fd], [], remaining)


def redis_answers(url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """PING on a fresh connection, no retries; raise when Redis does not answer."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                  retry=Retry(NoBackoff(), 0), single_connection_client=True)
    try:
        client.ping()
    finally:
        client.close()


def dependency_checks(config, dependencies: Iterable[str]) -> dict[str, Callable[[], None]]:
    """The checks of the named dependencies ("postgres", "redis") from the process's settings."""
    known = {"postgres": lambda: postgres_answers(config.database_url),
             "redis": lambda: redis_answers(config.redis_url)}
    return {name: known[name] for name in dependencies}


class Readiness:
    """Calls every check; returns the names of those that failed. One check runs at a time and its
    result serves the probes that arrive within `max_age` seconds."""

    def __init__(self, checks: Mapping[str, Callable[[], None]], max_age: float = 1.0):
        self.checks = dict(checks)
        self.max_age = max_age
        self._lock = threading.Lock()
        self._failing: list[str] | None = None
        self._at = 0.0

    def __call__(self) -> list[str]:
        with self._lock:
            if self._failing is not None and time.monotonic() - self._at < self.max_age:
                return list(self._failing)
            failing, reasons = [], []
            for name, check in self.checks.items():
                try:
                    check()
                except Exception as exc:  # any failure means "not ready"; the reason goes to the log
                    failing.append(name)
                    reasons.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            if failing and failing != self._failing:
                log.warning("not ready: %s", "; ".join(reasons))
            elif not failing and self._failing:
                log.info("ready again: %s answer", ", ".join(self.checks))
            self._failing, self._at = failing, time.monotonic()
            return list(failing)


def _json(start_response, status: str, body: dict, headers: Iterable[tuple[str, str]] = (),
          head: bool = False) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store"), *headers])
    return [] if head else [data]


def make_app(metrics_app, readiness: Callable[[], list[str]]):
    """A WSGI app: /healthz and /readyz here, everything else to `metrics_app`."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in PATHS:
            return metrics_app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed",
                         {"error": "method_not_allowed", "message": "method not allowed for this resource",
                          "details": []}, [("Allow", "GET, HEAD")])
        head = method == "HEAD"
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"}, head=head)
        failing = readiness()
        if failing:
            return _json(start_response, "503 Service Unavailable",
                         {"error": "unavailable", "message": f"not ready: {', '.join(failing)} unreachable",
                          "details": []}, [("Retry-After", str(RETRY_AFTER_SECONDS))], head=head)
        return _json(start_response, "200 OK", {"status": "ready"}, head=head)

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a probe in flight never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def start(port: int, app, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve `app` on addr:port from a daemon thread; the server is returned (shutdown() stops it)."""
    server = make_server(addr, port, app, _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    return server
