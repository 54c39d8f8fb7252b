"""`/api/telemetry/`: raw readings (JSON or CSV, keyset pages) and the original write path, POST."""
from __future__ import annotations

import csv
import io
from dataclasses import replace

from flask import Response, current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from visiontrack.stream_writer import StreamWriter
from visiontrack.web.app import services
from visiontrack.web.pagination import Keyset, keyset_page
from visiontrack.web.responses import json_response
from visiontrack.web.timefmt import format_ts

from . import telemetry_ingest
from .schemas import AcceptedSchema, TelemetryListArgsSchema, TelemetryPageSchema
from .telemetry_body import TELEMETRY_BODY
from .telemetry_store import COLUMNS, RawQuery, fetch_raw

blp = Blueprint("telemetry", __name__, url_prefix="/api/telemetry", description="Telemetry")


@blp.before_request
def _operators_read():
    """Reads take operator tokens. POST, a writer too, also takes device tokens and checks them itself."""
    if request.method != "POST":
        services().auth.require()


_CSV_HEADERS = {"X-Next-Cursor": {"description": "CSV only: the cursor of the next page; absent on the last page.",
                                   "schema": {"type": "string"}}}


def _writer() -> StreamWriter:
    return current_app.extensions["stream_writer"]


def _fetch(q: RawQuery, after: list | None, limit: int) -> list[tuple]:
    with services().reads.read() as cur:
        return fetch_raw(cur, replace(q, limit=limit), after)


def _wants_csv() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv" and request.accept_mimetypes["text/csv"] > request.accept_mimetypes["application/json"]


def _csv_response(rows: list[tuple], next_cursor: str | None) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((device_id, metric, format_ts(ts), repr(value)) for device_id, metric, ts, value in rows)
    response = Response(out.getvalue(), mimetype="text/csv")
    if next_cursor:
        response.headers["X-Next-Cursor"] = next_cursor
    return response


@blp.route("/")
class Telemetry(MethodView):
    @blp.arguments(TelemetryListArgsSchema(), location="query")
    @blp.response(200, TelemetryPageSchema)
    # Both media types under one 200: flask-smorest merges them, and without a schema the CSV entry added only
    # its description, over the JSON one's. The description and headers are the status's, so they say both.
    @blp.alt_response(200, content_type="text/csv", schema={"type": "string"}, headers=_CSV_HEADERS,
                      example="device_id,metric,ts,value\n7,temperature,2026-11-27T03:00:00.123Z,21.5\n",
                      description="A page of readings: JSON, or CSV when `Accept` prefers text/csv (the CSV page's "
                                  "next cursor is in X-Next-Cursor).")
    def get(self, args):
        """Raw readings, newest first unless `order=asc`; `Accept: text/csv` for CSV."""
        q = RawQuery(args["device_id"], args["metric"], args["from_"], args["to"], args["order"], args["limit"])
        page = keyset_page(lambda after, n: _fetch(q, after, n), q.limit, args["cursor"],
                           Keyset(q.cursor_shape, q.cursor_for))
        if _wants_csv():
            return _csv_response(page["items"], page["next_cursor"])
        # Built here rather than dumped through TelemetryPageSchema (which documents it): marshmallow costs
        # about 20 us per reading, most of a page's time.
        items = [{"device_id": device_id, "metric": metric, "ts": format_ts(ts), "value": value}
                 for device_id, metric, ts, value in page["items"]]
        return json_response({"items": items, "next_cursor": page["next_cursor"]})

    @blp.doc(requestBody=TELEMETRY_BODY)  # documentation only: the body is read and checked by telemetry_ingest
    @blp.response(202, AcceptedSchema, description="Every reading is durably in the stream.")
    def post(self):
        """Write readings: a device token for its own device, or an admin token with `device_id`."""
        return {"accepted": telemetry_ingest.ingest(services(), _writer())}
