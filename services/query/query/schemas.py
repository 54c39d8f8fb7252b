"""The query service's request and response shapes (docs/api.md, "Telemetry" and "Alerts")."""
from __future__ import annotations

from zoneinfo import ZoneInfo

from marshmallow import Schema, ValidationError, fields, validate, validates

from visiontrack.web.fields import ID_RANGE, METRIC, QueryInteger, TimeRangeArgs, Timestamp, WholeMatch
from visiontrack.web.pagination import page_schema

from . import buckets


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


TelemetryPageSchema = page_schema("TelemetryPage", ReadingSchema)


class AcceptedSchema(Schema):
    accepted = fields.Integer(metadata={"description": "Readings now durably in the stream."})


# --- aggregates and latest values ---------------------------------------------------------------------------------

AGGS = ("avg", "min", "max", "sum", "count")
_MAX_ZONE_NAME = 64
_AGG = f"(?:{'|'.join(AGGS)})"
# Comma-separated names, blanks around them and empty items allowed, at least one name: the check and the
# documents' pattern.
AGG_LIST = WholeMatch(rf"^(?:\s*,)*\s*{_AGG}\s*(?:,\s*(?:{_AGG}\s*)?)*$",
                      error="must be a comma-separated subset of avg,min,max,sum,count")


class AggregateArgsSchema(Schema):
    device_id = QueryInteger(required=True, validate=ID_RANGE)
    metric = fields.String(required=True, validate=METRIC)
    from_ = Timestamp(data_key="from", load_default=None,
                      metadata={"description": "Inclusive start (default: `to` minus one day)."})
    to = Timestamp(load_default=None, metadata={"description": "Exclusive end (default: now)."})
    interval = fields.String(required=True, validate=validate.OneOf(list(buckets.INTERVALS)))
    agg = fields.String(load_default=",".join(AGGS), validate=AGG_LIST,
                        metadata={"description": "Comma-separated subset of avg,min,max,sum,count."})
    tz = fields.String(load_default="UTC", metadata={"description": "IANA zone of the bucket boundaries.",
                                                     "maxLength": _MAX_ZONE_NAME})

    @validates("tz")
    def _zone(self, value, **_):
        if value in ("UTC", "Etc/UTC"):
            return
        try:
            if len(value) > _MAX_ZONE_NAME:
                raise ValueError
            ZoneInfo(value)
        except Exception:  # not found, a malformed key, a folder of the zone database
            raise ValidationError("is not an IANA time zone name") from None


class BucketSchema(Schema):
    ts = Timestamp(metadata={"description": "Bucket start"})
    avg = fields.Float()
    min = fields.Float()
    max = fields.Float()
    sum = fields.Float()
    count = fields.Integer()


class AggregateSchema(Schema):
    device_id = fields.Integer()
    metric = fields.String()
    interval = fields.String()
    tz = fields.String()
    items = fields.List(fields.Nested(BucketSchema))


class LatestArgsSchema(Schema):
    device_id = QueryInteger(required=True, validate=ID_RANGE)
    metric = fields.String(load_default=None, validate=METRIC)


class LatestValueSchema(Schema):
    ts = Timestamp()
    value = fields.Float()


class LatestSchema(Schema):
    device_id = fields.Integer()
    values = fields.Dict(keys=fields.String(validate=METRIC), values=fields.Nested(LatestValueSchema),
                         metadata={"description": '{"<metric>": {"ts", "value"}}'})


# --- alerts -----------------------------------------------------------------------------------------------------


class AlertListArgsSchema(TimeRangeArgs):
    device_id = QueryInteger(load_default=None, validate=ID_RANGE)
    rule_id = QueryInteger(load_default=None, validate=ID_RANGE)
    state = fields.String(load_default=None, validate=validate.OneOf(["firing", "resolved"]))
    from_ = Timestamp(data_key="from", load_default=None,
                      metadata={"description": "Alerts started at or after this time."})
    to = Timestamp(load_default=None, metadata={"description": "Alerts started before this time."})
    limit = QueryInteger(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(load_default=None)


class AlertSchema(Schema):
    id = fields.Integer()
    rule_id = fields.Integer()
    device_id = fields.Integer()
    state = fields.String()
    value = fields.Float(allow_none=True)
    started_at = Timestamp()
    resolved_at = Timestamp(allow_none=True)


AlertPageSchema = page_schema("AlertPage", AlertSchema)
