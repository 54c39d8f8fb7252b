"""JSON responses serialised by orjson: several times faster than Flask's encoder on pages of readings."""
from __future__ import annotations

import orjson
from flask import Response


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")
