"""The skeleton both Flask services are built on: config, error shape, OpenAPI, health, metrics."""
from __future__ import annotations

import json
import os
from typing import Iterable

from flask import Flask, jsonify
from flask_smorest import Api, Blueprint
from webargs.flaskparser import FlaskParser

from .. import logs
from .. import redis_client
from ..config import Config, read_database_url
from ..db import Database
from ..errors import ApiError
from ..readiness import RETRY_AFTER_SECONDS, Readiness, dependency_checks, not_ready_message
from . import errors, text_guard
from .auth import OperatorAuth
from .fields import IdConverter, Timestamp
from .openapi import OPENAPI_VERSION, DocumentingPlugin


class _Parser(FlaskParser):
    """webargs' parser, as both services use it:

    - argument errors answer 400 (errors.py turns them into the API's validation_error), and the OpenAPI
      documents say so, since flask-smorest documents this status for every endpoint with arguments;
    - a JSON body Python cannot read (an integer of over 4,300 digits, nesting past the recursion limit) is
      malformed JSON like any other, not an exception that would surface as a 500.
    """

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except json.JSONDecodeError:
            raise
        except (ValueError, RecursionError) as exc:  # a non-empty doc: webargs reads an empty one as "no body"
            raise json.JSONDecodeError(f"unreadable: {type(exc).__name__}", "<body>", 0) from exc


# Before any route is declared: every blueprint module imports this one (for `services`) first.
Blueprint.ARGUMENTS_PARSER = _Parser()


class _Api(Api):
    # The error responses flask-smorest documents (argument errors, `default`) in the shape errors.py sends,
    # not flask-smorest's own {code, status, message, errors}, which no answer has.
    ERROR_SCHEMA = errors.ErrorSchema


class Services:
    """The connections a request handler may use, one set per app."""

    def __init__(self, config: Config, part: str):
        self.config = config
        self.db = Database(config.database_url, config.db_pool_size, config.query_timeout_ms,
                           application_name=f"visiontrack-{part}")
        # The query service's reads may go to a hot standby; the registry reads what it just wrote.
        self.reads = self.db
        if part == "query" and config.database_read_url:
            self.reads = Database(read_database_url(config), config.db_pool_size, config.query_timeout_ms,
                                  application_name=f"visiontrack-{part}-read")
        # A telemetry append may wait VT_STREAM_WAIT_TIMEOUT_MS for replicas on this client's connection.
        timeout = max(2.0, config.stream_wait_timeout_ms / 1000 + 1)
        self.redis = redis_client.from_config(config, socket_timeout=timeout, socket_connect_timeout=2,
                                              health_check_interval=30)
        self.auth = OperatorAuth(config.admin_tokens, config.reader_tokens)


def _metrics(app: Flask, part: str):
    # Under gunicorn the start script sets PROMETHEUS_MULTIPROC_DIR: every worker writes its own files and
    # /metrics merges them. Without it (tests, flask run) a plain in-process registry is right.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics as Metrics
    else:
        from prometheus_flask_exporter import PrometheusMetrics as Metrics
    return Metrics(app, group_by="url_rule", defaults_prefix=f"visiontrack_{part}",
                   excluded_paths=["/healthz", "/readyz", "/metrics"])


def create_base_app(part: str, config: Config, blueprints: Iterable[Blueprint], openapi_prefix: str,
                    title: str) -> Flask:
    logs.configure(config.log_level, config.log_format, part)
    app = Flask(part)
    app.config.update(
        API_TITLE=title,
        API_VERSION="1",
        OPENAPI_VERSION=OPENAPI_VERSION,
        OPENAPI_URL_PREFIX=openapi_prefix,
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=None,
    )
    app.json.sort_keys = False
    app.url_map.converters["id"] = IdConverter
    app.extensions["visiontrack"] = Services(config, part)
    api = _Api(app, spec_kwargs={"components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"}}}, "security": [{"bearer": []}],
        "marshmallow_plugin": DocumentingPlugin()})
    api.register_converter(IdConverter, lambda _: {"type": "integer", "format": "int64", "minimum": 1})
    # Typed in the documents: a Timestamp is a string (RFC 3339, or epoch milliseconds in a query string).
    api.register_field(Timestamp, "string", None)
    app.before_request(text_guard.check_query)  # cheap: app-wide, before authentication
    for bp in blueprints:
        api.register_blueprint(bp)
    errors.register(app)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    # A standby is only checked to answer: lag slows nothing down to the point of refusing reads.
    read_server = ("postgres-read",) if part == "query" and config.database_read_url else ()
    readiness = Readiness(dependency_checks(config, part, ("postgres", *read_server, "redis")))

    @app.get("/readyz")
    def readyz():
        failing = readiness()
        if failing:
            raise ApiError("unavailable", not_ready_message(failing), retry_after=RETRY_AFTER_SECONDS)
        return jsonify(status="ready")

    app.extensions["visiontrack_metrics"] = _metrics(app, part)

    return app


def services() -> Services:
    from flask import current_app

    return current_app.extensions["visiontrack"]
