"""The query service's app factory: `gunicorn 'query.app:create_app()'`."""
from __future__ import annotations

from flask import Flask

from visiontrack import config as config_module
from visiontrack.config import Config
from visiontrack.stream_writer import StreamWriter
from visiontrack.web.app import create_base_app

from . import aggregates, alerts, telemetry


def create_app(config: Config | None = None) -> Flask:
    app = create_base_app(
        "query",
        config or config_module.load(),
        blueprints=[telemetry.blp, aggregates.blp, alerts.blp],
        openapi_prefix="/api/telemetry",
        title="VisionTrack query",
    )
    svc = app.extensions["visiontrack"]
    app.extensions["stream_writer"] = StreamWriter(svc.redis, svc.config)
    return app
