"""`/api/alert-rules/`: threshold and inactivity rules, scoped to a device, a device type or every device.

The aggregator evaluates them (aggregator.tasks.alerts); this service only keeps them (alert_rule_store).
"""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from visiontrack.web.app import services
from visiontrack.web.pagination import keyset_page

from .alert_rule_kinds import check_rule
from .alert_rule_store import FILTERS, WRITABLE, AlertRuleStore
from .json_body import json_body
from .schemas import (AlertRuleCreateSchema, AlertRuleListArgsSchema, AlertRulePageSchema, AlertRuleSchema,
                      AlertRuleUpdateSchema)

blp = Blueprint("alert_rules", __name__, url_prefix="/api/alert-rules", description="Alert rules")


@blp.before_request
def _operators_only():
    services().auth.require()


def _store() -> AlertRuleStore:
    return AlertRuleStore(services().db)


@blp.route("/")
class AlertRules(MethodView):
    @blp.arguments(AlertRuleListArgsSchema, location="query")
    @blp.response(200, AlertRulePageSchema)
    def get(self, args):
        """List alert rules, oldest first, a page at a time."""
        filters = {col: args[col] for col in FILTERS}
        return keyset_page(lambda after, n: _store().list(after, n, filters), args["limit"], args["cursor"])

    @json_body(blp, AlertRuleCreateSchema)
    @blp.response(201, AlertRuleSchema)
    def post(self, fields):
        """Create a threshold rule (metric, op, threshold, for_seconds) or an inactivity rule (after_seconds)."""
        rule = {name: fields.get(name) for name in WRITABLE}
        check_rule(rule)
        return _store().create(rule)


@blp.route("/<id:rule_id>")
class AlertRuleById(MethodView):
    @blp.response(200, AlertRuleSchema)
    def get(self, rule_id):
        """Read one alert rule."""
        return _store().get(rule_id)

    @json_body(blp, AlertRuleUpdateSchema)
    @blp.response(200, AlertRuleSchema)
    def patch(self, changes, rule_id):
        """Change a rule; its conditions are evaluated afresh (alerts firing stay until they resolve)."""
        return _store().update(rule_id, changes)

    @blp.response(204)
    def delete(self, rule_id):
        """Delete a rule: its firing alerts resolve (webhooks included), then it goes with its alerts."""
        _store().delete(rule_id)
