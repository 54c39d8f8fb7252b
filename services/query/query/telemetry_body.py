"""The body of `POST /api/telemetry/` as the document shows it: the handler reads and checks it itself, exactly
as /api/ingest does (visiontrack.validation, docs/contracts.md section 3); a marshmallow load would change its
errors and slow it down. What depends on more than the body stays in the descriptions: the time window of
`ts`, `device_id` with an admin token, the limits of the settings."""
from __future__ import annotations

from visiontrack.validation import MAX_ABS_VALUE, METRIC_PATTERN, RFC3339_RE
from visiontrack.web.fields import MAX_ID

_METRIC_NAMES = {"pattern": METRIC_PATTERN}
_NOTHING = {"not": {}}  # no value at all: the key is not there (apispec would take `false` for a schema's name)
_READING_VALUE = {"anyOf": [{"type": "number", "minimum": -MAX_ABS_VALUE, "maximum": MAX_ABS_VALUE},
                            {"type": "boolean"}],
                  "description": "A finite number, or a boolean (stored as 1/0)."}
_MESSAGE_FIELDS = {
    "device_id": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID,
                  "description": "Required with an admin token (every message the same device); with a device "
                                 "token, absent or the token's own device."},
    "ts": {"oneOf": [{"type": "string", "pattern": f"^{RFC3339_RE.pattern}$"}, {"type": "integer"}],
           "description": "RFC 3339 or epoch milliseconds; default: the time of receipt. At most "
                          "VT_MAX_FUTURE_SKEW ahead, not older than the raw retention."},
}
_MESSAGE = {
    "type": "object", "title": "Message", "required": ["values"], "additionalProperties": False,
    "properties": {**_MESSAGE_FIELDS, "values": {"type": "object", "minProperties": 1, "propertyNames": _METRIC_NAMES,
                                                 "additionalProperties": _READING_VALUE}}}
_FLAT_MESSAGE = {
    "type": "object", "title": "Flat message", "description": "Every key besides device_id and ts is a metric.",
    "properties": {**_MESSAGE_FIELDS, "values": _NOTHING}, "propertyNames": _METRIC_NAMES,
    "additionalProperties": _READING_VALUE,
    "not": {"propertyNames": {"enum": list(_MESSAGE_FIELDS)}},  # at least one metric
}
_MESSAGES = [_MESSAGE, _FLAT_MESSAGE]
TELEMETRY_BODY = {
    "required": True,
    "description": "One message or an array of them, as for POST /api/ingest: all or nothing, at most "
                   "VT_MAX_BODY_BYTES (413 beyond) and VT_MAX_READINGS readings.",
    "content": {"application/json": {"schema": {"oneOf": [
        *_MESSAGES, {"type": "array", "minItems": 1, "items": {"oneOf": _MESSAGES}}]}}},
}
