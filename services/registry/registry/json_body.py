"""`json_body`: the registry's `blp.arguments` for a JSON body, with the checks webargs leaves out."""
from __future__ import annotations

import functools

from flask import request
from marshmallow import Schema

from visiontrack.errors import ApiError
from visiontrack.web.errors import ErrorSchema
from visiontrack.web.text_guard import check_json_body


def json_body(blp, schema: type[Schema]):
    """`blp.arguments(schema)` for a JSON body, which must be labelled `application/json` (415 otherwise) and
    not be empty (400 `malformed_json`). webargs reads an unlabelled or empty body as `{}`: a PATCH would
    answer 200 having changed nothing, a POST 400 for missing fields. Nor may it hold text Postgres cannot
    store (a NUL or a lone surrogate: 400 naming the field). Endpoints that take no body (token rotation,
    DELETE) don't use this and need no Content-Type.

    All of it runs in the view, so after the blueprint's authentication: an unknown caller is told 401 without
    the body being read."""
    parse = blp.arguments(schema)

    def decorator(view):
        parsed = parse(view)

        @functools.wraps(parsed)
        def wrapper(*args, **kwargs):
            if request.mimetype != "application/json":
                raise ApiError("unsupported_media_type",
                               "the body must be JSON, sent with Content-Type: application/json")
            if not request.get_data(cache=True).strip():
                raise ApiError("malformed_json", "body is not valid JSON (it is empty)")
            check_json_body()
            return parsed(*args, **kwargs)

        return blp.alt_response(415, schema=ErrorSchema,
                                description="The body is not labelled application/json.")(wrapper)

    return decorator
