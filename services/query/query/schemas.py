"""The query service's request and response shapes (API.md)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from visiontrack.web.fields import ID_RANGE, METRIC, TimeRangeArgs, Timestamp


class TelemetryListArgsSchema(TimeRangeArgs):
    device_id = fields.Integer(load_default=None, validate=ID_RANGE)
    metric = fields.String(load_default=None, validate=METRIC)
    limit = fields.Integer(load_default=1000, validate=validate.Range(1, 10000))
    cursor = fields.String(load_default=None)
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))


class ReadingSchema(Schema):
    device_id = fields.Integer()
    metric = fields.String()
    ts = Timestamp()
    value = fields.Float()


class TelemetryPageSchema(Schema):
    items = fields.List(fields.Nested(ReadingSchema))
    next_cursor = fields.String(allow_none=True)


class AcceptedSchema(Schema):
    accepted = fields.Integer()
