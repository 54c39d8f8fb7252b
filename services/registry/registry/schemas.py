"""The registry's request and response shapes (docs/api.md, "Devices"), checked by marshmallow."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from visiontrack.web.fields import (ID_RANGE, METRIC, QueryInteger, StrictBoolean, StrictFloat, StrictInteger,
                                    Timestamp)
from visiontrack.web.pagination import page_schema

from .alert_rule_kinds import DEFAULT_KIND, KINDS, change_rules, document_kinds
from .webhook_url import WEBHOOK_URL


_NAME = validate.Length(min=1, max=128)
_LABEL = validate.Length(max=128)


class DeviceCreateSchema(Schema):
    name = fields.String(required=True, validate=_NAME)
    type = fields.String(allow_none=True, validate=_LABEL, load_default=None)
    location = fields.String(allow_none=True, validate=validate.Length(max=256), load_default=None)
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


class DeviceUpdateSchema(Schema):
    name = fields.String(validate=_NAME)
    type = fields.String(allow_none=True, validate=_LABEL)
    location = fields.String(allow_none=True, validate=validate.Length(max=256))
    metadata = fields.Dict(keys=fields.String())
    status = fields.String(validate=validate.OneOf(["active", "disabled"]))


class DeviceSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    type = fields.String(allow_none=True)
    location = fields.String(allow_none=True)
    metadata = fields.Dict(keys=fields.String())
    status = fields.String()
    created_at = Timestamp()
    updated_at = Timestamp()
    last_seen_at = Timestamp(allow_none=True)


class DeviceWithTokenSchema(DeviceSchema):
    token = fields.String(metadata={"description": "The device's token; shown only in this answer."})


class DeviceListArgsSchema(Schema):
    limit = QueryInteger(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(load_default=None)
    type = fields.String(load_default=None)
    status = fields.String(load_default=None, validate=validate.OneOf(["active", "disabled"]))
    q = fields.String(load_default=None, validate=validate.Length(min=1, max=128),
                      metadata={"description": "Name prefix."})


DevicePageSchema = page_schema("DevicePage", DeviceSchema)


class TokenSchema(Schema):
    token = fields.String()


class MessageCountsSchema(Schema):
    received = fields.Integer(metadata={"description": "Requests and MQTT PUBLISHes the ingestor took from the "
                                                       "device (its token known): accepted plus rejected."})
    accepted = fields.Integer(metadata={"description": "Those answered 2xx or PUBACKed: their readings are in "
                                                       "the stream."})
    rejected = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "Those refused, by reason (an open set: the error code, or the kind of the first bad "
                       "reading, e.g. malformed_json, invalid_metric_name, ts_in_future, unavailable); "
                       "reasons never seen are absent."})


class ReadingCountsSchema(Schema):
    accepted = fields.Integer(metadata={"description": "Readings in the accepted messages."})
    stored = fields.Integer(metadata={"description": "Readings that reached Postgres (duplicates, dropped, "
                                                     "are not counted)."})


class DeviceStatsPeriodSchema(Schema):
    from_ = Timestamp(data_key="from", attribute="from", metadata={"description": "Start of the period."})
    messages = fields.Nested(MessageCountsSchema)
    readings = fields.Nested(ReadingCountsSchema)


class DeviceStatsSchema(Schema):
    device_id = fields.Integer()
    as_of = Timestamp()
    last_hour = fields.Nested(DeviceStatsPeriodSchema, metadata={
        "description": "The current 5-minute bucket (UTC) and the 11 before it: the last 55 to 60 "
                       "minutes."})
    since_registration = fields.Nested(DeviceStatsPeriodSchema)
    last_accepted_at = Timestamp(allow_none=True, metadata={
        "description": "Receive time of the last accepted message; null before any."})
    newest_reading_ts = Timestamp(allow_none=True, metadata={
        "description": "The newest `ts` among the accepted readings; null before any."})


# --- alert rules ------------------------------------------------------------------------------------------------

OPS = [">", ">=", "<", "<=", "==", "!="]
SEVERITIES = ["info", "warning", "critical"]
_WEEK = 7 * 86_400
_RULE_NAME = validate.Length(min=1, max=128)


class AlertRuleUpdateSchema(Schema):
    name = fields.String(validate=_RULE_NAME)
    kind = fields.String(validate=validate.OneOf(KINDS))
    metric = fields.String(allow_none=True, validate=METRIC)
    op = fields.String(allow_none=True, validate=validate.OneOf(OPS))
    threshold = StrictFloat(allow_none=True, allow_nan=False)
    for_seconds = StrictInteger(validate=validate.Range(0, _WEEK))
    after_seconds = StrictInteger(allow_none=True, validate=validate.Range(1, 30 * 86_400))
    device_id = StrictInteger(allow_none=True, validate=ID_RANGE)
    device_type = fields.String(allow_none=True, validate=validate.Length(min=1, max=128))
    severity = fields.String(validate=validate.OneOf(SEVERITIES))
    webhook_url = fields.String(allow_none=True, validate=WEBHOOK_URL)
    enabled = StrictBoolean()

    @staticmethod
    def finish_document(json_schema: dict, components) -> dict:
        """The changed rule is checked whole (alert_rule_kinds): the document says what a change alone breaks."""
        return {**change_rules(json_schema), "description": "The fields to change. The rule they make must "
                                                             "still be one of its kind (see AlertRuleCreate)."}


class AlertRuleCreateSchema(AlertRuleUpdateSchema):
    name = fields.String(required=True, validate=_RULE_NAME)
    kind = fields.String(load_default=DEFAULT_KIND, validate=validate.OneOf(KINDS))
    for_seconds = StrictInteger(load_default=0, validate=validate.Range(0, _WEEK))
    severity = fields.String(load_default="warning", validate=validate.OneOf(SEVERITIES))
    enabled = StrictBoolean(load_default=True)

    @staticmethod
    def finish_document(json_schema: dict, components) -> dict:
        return document_kinds(json_schema, components, "Create", default_kind=DEFAULT_KIND)


class AlertRuleSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    kind = fields.String()
    metric = fields.String(allow_none=True)
    op = fields.String(allow_none=True)
    threshold = fields.Float(allow_none=True)
    for_seconds = fields.Integer()
    after_seconds = fields.Integer(allow_none=True)
    device_id = fields.Integer(allow_none=True)
    device_type = fields.String(allow_none=True)
    severity = fields.String()
    webhook_url = fields.String(allow_none=True)
    enabled = fields.Boolean()
    created_at = Timestamp()
    updated_at = Timestamp()

    @staticmethod
    def finish_document(json_schema: dict, components) -> dict:
        return document_kinds(json_schema, components, "")


class AlertRuleListArgsSchema(Schema):
    limit = QueryInteger(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(load_default=None)
    kind = fields.String(load_default=None, validate=validate.OneOf(KINDS))
    metric = fields.String(load_default=None, validate=METRIC)
    device_id = QueryInteger(load_default=None, validate=ID_RANGE)
    device_type = fields.String(load_default=None)
    severity = fields.String(load_default=None, validate=validate.OneOf(SEVERITIES))
    enabled = fields.Boolean(load_default=None)


AlertRulePageSchema = page_schema("AlertRulePage", AlertRuleSchema)
