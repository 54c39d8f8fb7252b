"""The registry's app factory: `gunicorn 'registry.app:create_app()'`."""
from __future__ import annotations

from flask import Flask

from visiontrack import config as config_module
from visiontrack.config import Config
from visiontrack.web.app import create_base_app

from . import alert_rules, devices


def create_app(config: Config | None = None) -> Flask:
    return create_base_app(
        "registry",
        config or config_module.load(),
        blueprints=[devices.blp, alert_rules.blp],
        openapi_prefix="/api/devices",
        title="VisionTrack registry",
    )
