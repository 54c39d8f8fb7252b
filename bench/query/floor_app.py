"""The least a Python answer can cost here: a WSGI app that returns a fixed JSON body and does nothing else.

The benchmark serves it with the query service's own gunicorn settings behind the same nginx and measures it
with the same wrk script, so its percentiles are the floor under the query service's: what gunicorn, nginx,
the client and the machine take before any Flask, SQL or JSON work.
"""
from __future__ import annotations

BODY = b'{"device_id": 1, "values": {}}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
