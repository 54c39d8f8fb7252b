"""The query service's app factory: `gunicorn 'query.app:create_app()'`."""
from __future__ import annotations

from flask import Flask, request

from visiontrack import config as config_module
from visiontrack.config import Config
from visiontrack.stream_writer import StreamWriter
from visiontrack.web.app import create_base_app

from . import aggregates, alerts, replica_lag, telemetry


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
    lag = replica_lag.LagSampler(svc.config.database_read_url or None)

    @app.before_request
    def _sample_lag_on_scrape():
        if request.path == "/metrics":
            lag.maybe_sample()

    return app
