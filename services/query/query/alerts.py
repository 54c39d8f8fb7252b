"""`GET /api/alerts/`: alert events, newest first, with filters and keyset pages."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from visiontrack.web.app import services
from visiontrack.web.pagination import keyset_page

from .alert_store import fetch_alerts
from .schemas import AlertListArgsSchema, AlertPageSchema

blp = Blueprint("alerts", __name__, url_prefix="/api/alerts", description="Alerts raised by the alert rules")


@blp.before_request
def _operators_only():
    services().auth.require()


@blp.route("/")
class Alerts(MethodView):
    @blp.arguments(AlertListArgsSchema, location="query")
    @blp.response(200, AlertPageSchema)
    def get(self, args):
        """Alert events, newest first."""
        db = services().reads
        return keyset_page(lambda after, n: fetch_alerts(db, args, after, n), args["limit"], args["cursor"])
