"""One error shape for every answer that is not a success, registered once per app."""
from __future__ import annotations

import logging

import marshmallow as ma
import psycopg2
import psycopg2.errors
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from ..errors import STATUS, ApiError

log = logging.getLogger("visiontrack.web")

_HTTP_CODES = {400: "validation_error", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 429: "rate_limited", 503: "unavailable"}


class ErrorDetailSchema(ma.Schema):
    index = ma.fields.Integer(allow_none=True,
                              metadata={"description": "The message's position in a batch of readings, if any."})
    # It echoes the client's own keys, so it may hold any character, U+0000 too: no text rule.
    field = ma.fields.String(allow_none=True,
                             metadata={"description": "The field at fault, dotted (values.temperature), with the "
                                                      "client's keys as sent.", "pattern": r"^[\s\S]*$"})
    message = ma.fields.String(required=True)


class ErrorSchema(ma.Schema):
    """Every answer that is not a success (docs/api.md, "Errors"); only documents it: api_error_response sends
    it."""

    error = ma.fields.String(required=True, validate=ma.validate.OneOf(list(STATUS)))
    message = ma.fields.String(required=True)
    details = ma.fields.List(ma.fields.Nested(ErrorDetailSchema), required=True)


def api_error_response(err: ApiError):
    response = jsonify(err.body())
    response.status_code = err.status
    if err.retry_after is not None:
        response.headers["Retry-After"] = str(err.retry_after)
    return response


def _webargs_details(messages) -> list[dict]:
    """flask-smorest/webargs messages {"json": {"name": ["..."]}} as [{"field", "message"}]."""
    details: list[dict] = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, sub in node.items():
                walk(sub, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list) and all(isinstance(m, str) for m in node):
            for msg in node:
                details.append({"field": path or None, "message": msg})
        elif isinstance(node, list):
            for sub in node:
                walk(sub, path)
        else:
            details.append({"field": path or None, "message": str(node)})

    for location, fields in (messages or {}).items():
        walk(fields, "" if location in ("json", "query", "querystring", "form", "json_or_form") else location)
    return details


def _http_error(exc: HTTPException):
    if exc.code in (400, 422) and getattr(exc, "data", None) and "messages" in exc.data:
        details = _webargs_details(exc.data["messages"])
        if any(d["message"] == "Invalid JSON body." for d in details):
            return api_error_response(ApiError("malformed_json", "body is not valid JSON"))
        return api_error_response(ApiError("validation_error", "invalid request; see details", details))
    code = _HTTP_CODES.get(exc.code or 500)
    if code is None:
        log.error("unexpected HTTP error %s: %s", exc.code, exc.description)
        return api_error_response(ApiError("internal_error", "internal error"))
    message = {404: "no such resource", 405: "method not allowed for this resource"}.get(exc.code, exc.description)
    response = api_error_response(ApiError(code, message))
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # required on a 405 (RFC 9110 15.5.6)
    return response


def _database_down(exc: Exception):
    log.error("database unavailable: %s", exc)
    return api_error_response(ApiError("unavailable", "the database is unreachable; retry later", retry_after=5))


def _transaction_conflict(exc: Exception):
    # A deadlock (40P01) or serialization failure (40001): Postgres rolled the transaction back because a
    # concurrent one conflicted with it. An OperationalError, but the database is up and running: the
    # request may be sent again at once. Stores that can re-run their transactions already did.
    log.warning("transaction rolled back by the database (%s): %s", getattr(exc, "pgcode", None),
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return api_error_response(ApiError("unavailable", "a concurrent change conflicted with this request; retry",
                                       retry_after=1))


# The data exceptions (SQLSTATE class 22) that mean a value was refused as input: out of range, malformed for
# its type, too long, not representable. The rest of the class (a division by zero, a bad regular expression,
# a subscript error, ...) says our own SQL is wrong: a 500, logged with the traceback.
BAD_INPUT_VALUES = (
    psycopg2.errors.NumericValueOutOfRange,  # 22003
    psycopg2.errors.InvalidTextRepresentation,  # 22P02
    psycopg2.errors.StringDataRightTruncation,  # 22001
    psycopg2.errors.DatetimeFieldOverflow,  # 22008
    psycopg2.errors.InvalidDatetimeFormat,  # 22007
    psycopg2.errors.CharacterNotInRepertoire,  # 22021
    psycopg2.errors.UntranslatableCharacter,  # 22P05
    psycopg2.errors.InvalidParameterValue,  # 22023
)


def _bad_value(exc: Exception):
    # A safety net: the schemas bound what they take, so this means one of them missed a value Postgres
    # refuses (a number out of range, say). Still the caller's input: a 400, never a 500.
    log.warning("value refused by the database: %s", str(exc).strip().splitlines()[0])
    return api_error_response(ApiError("validation_error", "a value is out of range or malformed for storage"))


def _unexpected(exc: Exception):
    log.exception("unhandled error")
    return api_error_response(ApiError("internal_error", "internal error"))


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, api_error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(psycopg2.OperationalError, _database_down)
    app.register_error_handler(psycopg2.errors.TransactionRollbackError, _transaction_conflict)  # more specific
    for exc in BAD_INPUT_VALUES:  # any other DataError falls through to _unexpected: a 500
        app.register_error_handler(exc, _bad_value)
    app.register_error_handler(Exception, _unexpected)
