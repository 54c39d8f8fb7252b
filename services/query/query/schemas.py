"""The query service's request and response shapes (API.md)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from visiontrack.validation import METRIC_PATTERN
from visiontrack.web.fields import ID_RANGE, MAX_ID, METRIC, QueryInteger, TimeRangeArgs, Timestamp


class TelemetryListArgsSchema(TimeRangeArgs):
    device_id = QueryInteger(load_default=None, validate=ID_RANGE)
    metric = fields.String(load_default=None, validate=METRIC)
    limit = QueryInteger(load_default=1000, validate=validate.Range(1, 10000))
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
    accepted = fields.Integer(metadata={"description": "Readings now durably in the stream."})


# The body of POST /api/telemetry/, for the document only: the handler reads and checks it itself, exactly as
# /api/ingest does (visiontrack.validation); a marshmallow load would change its errors and slow it down.
# OpenAPI 3.0 has no patternProperties: the metric names' pattern is in the descriptions.
_READING_VALUE = {"anyOf": [{"type": "number"}, {"type": "boolean"}],
                  "description": f"A finite number, or a boolean (stored as 1/0); the metric name matches "
                                 f"{METRIC_PATTERN}."}
_MESSAGE_FIELDS = {
    "device_id": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID,
                  "description": "Required with an admin token (every message the same device); with a device "
                                 "token, absent or the token's own device."},
    "ts": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}],
           "description": "RFC 3339 or epoch milliseconds; default: the time of receipt. At most "
                          "VT_MAX_FUTURE_SKEW ahead, not older than the raw retention."},
}
_MESSAGE_FORMS = [
    {"type": "object", "title": "Message", "required": ["values"], "additionalProperties": False,
     "properties": {**_MESSAGE_FIELDS, "values": {"type": "object", "minProperties": 1,
                                                   "additionalProperties": _READING_VALUE}}},
    {"type": "object", "title": "Flat message", "minProperties": 1, "additionalProperties": _READING_VALUE,
     "description": "Every key besides device_id and ts is a metric (at least one).",
     "properties": _MESSAGE_FIELDS},
]
TELEMETRY_BODY = {
    "required": True,
    "description": "One message or an array of them, as for POST /api/ingest: all or nothing, at most "
                   "VT_MAX_BODY_BYTES (413 beyond) and VT_MAX_READINGS readings.",
    "content": {"application/json": {"schema": {"oneOf": [
        *_MESSAGE_FORMS, {"type": "array", "minItems": 1, "items": {"oneOf": _MESSAGE_FORMS}}]}}},
}
