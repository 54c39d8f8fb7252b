"""/healthz and /readyz of an aggregator process (the Celery worker or beat), on its metrics port.

- GET /healthz: 200 {"status": "ok"} while the process serves (liveness).
- GET /readyz: 200 {"status": "ready"} when every dependency of the process answers (visiontrack.readiness,
  as in the web services), else 503 with the project's error shape and Retry-After (readiness).
- Every other path goes to the Prometheus WSGI app unchanged (/metrics).
"""
from __future__ import annotations

import json
import threading
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from visiontrack.readiness import RETRY_AFTER_SECONDS, not_ready_message

PATHS = ("/healthz", "/readyz")


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
                         {"error": "unavailable", "message": not_ready_message(failing),
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
