"""`/api/devices/`: register, list, read, change, delete devices, rotate their tokens, read their accounting."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from visiontrack.web.app import services
from visiontrack.web.pagination import keyset_page

from .device_stats_store import DeviceStatsStore
from .device_store import DeviceStore
from .json_body import json_body
from .schemas import (DeviceCreateSchema, DeviceListArgsSchema, DevicePageSchema, DeviceSchema,
                      DeviceStatsSchema, DeviceUpdateSchema, DeviceWithTokenSchema, TokenSchema)

blp = Blueprint("devices", __name__, url_prefix="/api/devices", description="Devices and their tokens")


@blp.before_request
def _operators_only():
    services().auth.require()


def _store() -> DeviceStore:
    svc = services()
    return DeviceStore(svc.db, svc.redis, svc.config.token_index_key)


@blp.route("/")
class Devices(MethodView):
    @blp.arguments(DeviceListArgsSchema, location="query")
    @blp.response(200, DevicePageSchema)
    def get(self, args):
        """List devices, oldest first, a page at a time."""
        return keyset_page(lambda after, n: _store().list(after, n, args["type"], args["status"], args["q"]),
                           args["limit"], args["cursor"])

    @json_body(blp, DeviceCreateSchema)
    @blp.response(201, DeviceWithTokenSchema)
    def post(self, fields):
        """Register a device; the answer holds its token, shown only this once."""
        return _store().create(fields)


@blp.route("/<id:device_id>")
class DeviceById(MethodView):
    @blp.response(200, DeviceSchema)
    def get(self, device_id):
        """Read one device."""
        return _store().get(device_id)

    @json_body(blp, DeviceUpdateSchema)
    @blp.response(200, DeviceSchema)
    def patch(self, changes, device_id):
        """Change a device; `status: disabled` makes its token answer 403 within seconds."""
        return _store().update(device_id, changes)

    @blp.response(204)
    def delete(self, device_id):
        """Delete a device: its token stops working and its telemetry is purged in the background.

        Its firing alerts resolve first, with their "resolved" webhooks; then they go, and so do the rules
        scoped to it (hidden at once)."""
        _store().delete(device_id)


@blp.route("/<id:device_id>/token")
class DeviceToken(MethodView):
    @blp.response(200, TokenSchema)
    def post(self, device_id):
        """Issue a new token; the old one stops working within seconds."""
        return {"token": _store().rotate_token(device_id)}


@blp.route("/<id:device_id>/stats")
class DeviceStats(MethodView):
    @blp.response(200, DeviceStatsSchema)
    def get(self, device_id):
        """What the device sent in the last hour and since registration: messages received, accepted and
        rejected by reason, readings accepted and stored, and when it was last accepted."""
        svc = services()
        return DeviceStatsStore(svc.db, svc.redis).get(device_id)
