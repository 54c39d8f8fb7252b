"""Text with a NUL character is refused at the door (400 naming the field).

Postgres text cannot hold U+0000: psycopg2 raises ValueError when it meets one in a parameter, which would
surface as a 500 from whichever query first got the value. JSON can carry it (`\\u0000`) and so can a query
string (`%00`), so every request is checked once here instead of in every schema.
"""
from __future__ import annotations

from flask import request

from ..errors import ApiError


def _nul_path(node, path: str) -> str | None:
    """The first field (dotted path) holding a NUL in a key or a string value, or None."""
    if isinstance(node, str):
        return path if "\x00" in node else None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = key.replace("\x00", "\\u0000") if isinstance(key, str) else str(key)
        here = f"{path}.{name}" if path else name
        if isinstance(key, str) and "\x00" in key:
            return here
        found = _nul_path(value, here)
        if found:
            return found
    return None


def _refuse(field: str) -> ApiError:
    return ApiError("validation_error", "invalid request; see details",
                    [{"field": field, "message": "must not contain a NUL (U+0000) character"}])


def check_query() -> None:
    """Every request's query string."""
    for name, value in request.args.items(multi=True):
        if "\x00" in name or "\x00" in value:
            raise _refuse(name.replace("\x00", "\\u0000"))


def check_json_body() -> None:
    """A JSON body the handlers parse whole (webargs): for the apps whose bodies are small documents. Not for
    the ingest path, which reads its body bounded and validates every string in it by pattern."""
    # The escape only: a raw NUL byte is not valid JSON and is refused by the parser as such. The bytes are
    # searched first so that bodies without one (nearly all) are not walked.
    if request.mimetype == "application/json" and b"\\u0000" in request.get_data(cache=True):
        body = request.get_json(silent=True)
        found = _nul_path(body, "") if body is not None else None
        if found is not None:
            raise _refuse(found or "body")
