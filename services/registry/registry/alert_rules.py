"""`/api/alert-rules/`: threshold and inactivity rules, scoped to a device, a device type or every device.

The aggregator evaluates them (aggregator.tasks.alerts); this module only keeps them. A deleted rule is
marked (`deleted_at`) and hidden here at once; the aggregator resolves its firing alerts, sends their
webhooks and removes the row.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import psycopg2.errors
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate

from visiontrack.errors import ApiError
from visiontrack.web.app import services
from visiontrack.web.fields import (ID_RANGE, METRIC, QueryInteger, StrictBoolean, StrictFloat, StrictInteger,
                                    Timestamp)
from visiontrack.web.pagination import decode_cursor, encode_cursor

from .schemas import json_body

blp = Blueprint("alert_rules", __name__, url_prefix="/api/alert-rules", description="Alert rules")

OPS = [">", ">=", "<", "<=", "==", "!="]
KINDS = ["threshold", "inactivity"]
SEVERITIES = ["info", "warning", "critical"]
_COLUMNS = ("id, name, kind, metric, op, threshold, for_seconds, after_seconds, device_id, device_type, severity, "
            "webhook_url, enabled, created_at, updated_at")
_WRITABLE = ("name", "kind", "metric", "op", "threshold", "for_seconds", "after_seconds", "device_id",
             "device_type", "severity", "webhook_url", "enabled")
_URL = validate.URL(schemes={"http", "https"}, require_tld=False, error="must be an http or https URL")


def _port_in_range(url: str) -> None:
    """marshmallow's URL check takes any digits as a port; a rule whose port cannot exist never delivers."""
    try:
        port = urlsplit(url).port
    except ValueError:  # above 65535
        port = 0
    if port == 0:
        raise ValidationError("must be an http or https URL with a port from 1 to 65535")


_WEEK = 7 * 86_400
# A deleted rule keeps its row until the aggregator has resolved its alerts; every query here skips it.
_LIVE = "deleted_at IS NULL"


class AlertRuleUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=128))
    kind = fields.String(validate=validate.OneOf(KINDS))
    metric = fields.String(allow_none=True, validate=METRIC)
    op = fields.String(allow_none=True, validate=validate.OneOf(OPS))
    threshold = StrictFloat(allow_none=True, allow_nan=False)
    for_seconds = StrictInteger(validate=validate.Range(0, _WEEK))
    after_seconds = StrictInteger(allow_none=True, validate=validate.Range(1, 30 * 86_400))
    device_id = StrictInteger(allow_none=True, validate=ID_RANGE)
    device_type = fields.String(allow_none=True, validate=validate.Length(min=1, max=128))
    severity = fields.String(validate=validate.OneOf(SEVERITIES))
    webhook_url = fields.String(allow_none=True, validate=[validate.Length(max=2048), _URL, _port_in_range])
    enabled = StrictBoolean()


class AlertRuleCreateSchema(AlertRuleUpdateSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    kind = fields.String(load_default="threshold", validate=validate.OneOf(KINDS))
    for_seconds = StrictInteger(load_default=0, validate=validate.Range(0, _WEEK))
    severity = fields.String(load_default="warning", validate=validate.OneOf(SEVERITIES))
    enabled = StrictBoolean(load_default=True)


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


class AlertRuleListArgsSchema(Schema):
    limit = QueryInteger(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(load_default=None)
    kind = fields.String(load_default=None, validate=validate.OneOf(KINDS))
    metric = fields.String(load_default=None, validate=METRIC)
    device_id = QueryInteger(load_default=None, validate=ID_RANGE)
    device_type = fields.String(load_default=None)
    severity = fields.String(load_default=None, validate=validate.OneOf(SEVERITIES))
    enabled = fields.Boolean(load_default=None)


class AlertRulePageSchema(Schema):
    items = fields.List(fields.Nested(AlertRuleSchema))
    next_cursor = fields.String(allow_none=True)


def check(rule: dict) -> None:
    """The checks that span fields, on the rule as it would be stored; a 400 naming each field."""
    details = []

    def bad(field: str, message: str) -> None:
        details.append({"field": field, "message": message})

    if rule["kind"] == "threshold":
        for field in ("metric", "op", "threshold"):
            if rule.get(field) is None:
                bad(field, "is required for a threshold rule")
        if rule.get("after_seconds") is not None:
            bad("after_seconds", "applies only to inactivity rules")
    else:
        if rule.get("after_seconds") is None:
            bad("after_seconds", "is required for an inactivity rule")
        for field in ("op", "threshold"):
            if rule.get(field) is not None:
                bad(field, "applies only to threshold rules")
        if rule.get("for_seconds"):
            bad("for_seconds", "applies only to threshold rules (inactivity uses after_seconds)")
    if rule.get("device_id") is not None and rule.get("device_type") is not None:
        bad("device_type", "give device_id or device_type, not both (neither: every device)")
    if details:
        raise ApiError("validation_error", "invalid alert rule; see details", details)


def _not_found(rule_id: int) -> ApiError:
    return ApiError("not_found", f"alert rule {rule_id} does not exist")


def _no_device() -> ApiError:
    return ApiError("validation_error", "invalid alert rule; see details",
                    [{"field": "device_id", "message": "no such device"}])


@blp.before_request
def _operators_only():
    services().auth.require()


@blp.route("/")
class AlertRules(MethodView):
    @blp.arguments(AlertRuleListArgsSchema, location="query")
    @blp.response(200, AlertRulePageSchema)
    def get(self, args):
        """List alert rules, oldest first, a page at a time."""
        where, params = [_LIVE], {"limit": args["limit"] + 1}
        for col in ("kind", "metric", "device_id", "device_type", "severity", "enabled"):
            if args[col] is not None:
                where.append(f"{col} = %({col})s")
                params[col] = args[col]
        if args["cursor"]:
            where.append("id > %(after)s")
            params["after"] = decode_cursor(args["cursor"], (int,))[0]
        with services().db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE {' AND '.join(where)} ORDER BY id "
                        "LIMIT %(limit)s", params)
            rows = cur.fetchall()
        page, more = rows[: args["limit"]], len(rows) > args["limit"]
        return {"items": page, "next_cursor": encode_cursor([page[-1]["id"]]) if more else None}

    @json_body(blp, AlertRuleCreateSchema)
    @blp.response(201, AlertRuleSchema)
    def post(self, fields_):
        """Create a threshold rule (metric, op, threshold, for_seconds) or an inactivity rule (after_seconds)."""
        rule = {name: fields_.get(name) for name in _WRITABLE}
        check(rule)
        try:
            with services().db.transaction() as cur:
                cur.execute(f"INSERT INTO alert_rules ({', '.join(_WRITABLE)}) "
                            f"VALUES ({', '.join(f'%({n})s' for n in _WRITABLE)}) RETURNING {_COLUMNS}", rule)
                return cur.fetchone()
        except psycopg2.errors.ForeignKeyViolation:
            raise _no_device() from None


@blp.route("/<id:rule_id>")
class AlertRuleById(MethodView):
    @blp.response(200, AlertRuleSchema)
    def get(self, rule_id):
        """Read one alert rule."""
        with services().db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE id = %s AND {_LIVE}", (rule_id,))
            rule = cur.fetchone()
        if rule is None:
            raise _not_found(rule_id)
        return rule

    @json_body(blp, AlertRuleUpdateSchema)
    @blp.response(200, AlertRuleSchema)
    def patch(self, changes, rule_id):
        """Change a rule; its conditions are evaluated afresh (alerts firing stay until they resolve)."""
        try:
            with services().db.transaction() as cur:
                cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE id = %s AND {_LIVE} FOR UPDATE", (rule_id,))
                rule = cur.fetchone()
                if rule is None:
                    raise _not_found(rule_id)
                if not changes:
                    return rule
                check({**rule, **changes})
                sets = ", ".join(f"{col} = %({col})s" for col in changes)
                cur.execute(f"UPDATE alert_rules SET {sets}, updated_at = now() WHERE id = %(id)s "
                            f"RETURNING {_COLUMNS}", {**changes, "id": rule_id})
                updated = cur.fetchone()
                cur.execute("DELETE FROM alert_state WHERE rule_id = %s", (rule_id,))
                return updated
        except psycopg2.errors.ForeignKeyViolation:
            raise _no_device() from None

    @blp.response(204)
    def delete(self, rule_id):
        """Delete a rule: its firing alerts resolve (webhooks included), then it goes with its alerts."""
        # Only marked here: the aggregator resolves the rule's firing alerts at its next evaluation, sends the
        # "resolved" webhooks after its commit, and removes the row. It stays the one writer of alert events,
        # and this request never waits on a webhook. `enabled = false` too, so an evaluator that predates
        # deleted_at still resolves them.
        with services().db.transaction() as cur:
            cur.execute("UPDATE alert_rules SET deleted_at = now(), enabled = false "
                        f"WHERE id = %s AND {_LIVE} RETURNING id", (rule_id,))
            if cur.fetchone() is None:
                raise _not_found(rule_id)
