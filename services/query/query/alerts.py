"""`GET /api/alerts/`: alert events, newest first, with filters and keyset pages."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from visiontrack.web.app import services
from visiontrack.web.fields import ID_RANGE, QueryInteger, TimeRangeArgs, Timestamp
from visiontrack.web.pagination import decode_cursor, encode_cursor

blp = Blueprint("alerts", __name__, url_prefix="/api/alerts", description="Alerts raised by the alert rules")


@blp.before_request
def _operators_only():
    services().auth.require()


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


class AlertPageSchema(Schema):
    items = fields.List(fields.Nested(AlertSchema))
    next_cursor = fields.String(allow_none=True)


@blp.route("/")
class Alerts(MethodView):
    @blp.arguments(AlertListArgsSchema, location="query")
    @blp.response(200, AlertPageSchema)
    def get(self, args):
        """Alert events, newest first."""
        svc = services()
        where, params = ["TRUE"], {"limit": args["limit"] + 1}
        for col in ("device_id", "rule_id", "state"):
            if args[col] is not None:
                where.append(f"{col} = %({col})s")
                params[col] = args[col]
        if args["from_"] is not None:
            where.append("started_at >= %(from)s")
            params["from"] = args["from_"]
        if args["to"] is not None:
            where.append("started_at < %(to)s")
            params["to"] = args["to"]
        if args["cursor"]:
            where.append("id < %(after)s")
            params["after"] = decode_cursor(args["cursor"], (int,))[0]
        with svc.db.transaction() as cur:
            cur.execute(f"""SELECT id, rule_id, device_id, state, value, started_at, resolved_at
                            FROM alert_events WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %(limit)s""",
                        params)
            rows = cur.fetchall()
        page, more = rows[: args["limit"]], len(rows) > args["limit"]
        return {"items": page, "next_cursor": encode_cursor([page[-1]["id"]]) if more else None}
