"""Text Postgres cannot store is refused at the door: a 400 naming the field, never a 500 deeper down.

Postgres text holds neither U+0000 (psycopg2 raises ValueError on a NUL in a parameter) nor a lone surrogate,
U+D800 to U+DFFF (no UTF-8 encoder takes one: psycopg2 raises UnicodeEncodeError). JSON can carry both as
escapes (`\\u0000`, `\\ud800`), a query string a NUL (`%00`), a cursor either. `text_problem` is the one check;
`check_query` applies it to every query string (app-wide: cheap), `check_json_body` to a JSON body (called by
the registry's `json_body`, after authentication), pagination.decode_cursor to a cursor's strings.
"""
from __future__ import annotations

import json
import re

from flask import request

from ..errors import ApiError

_NUL = "must not contain a NUL (U+0000) character"
_SURROGATE = "must not contain a lone surrogate (U+D800 to U+DFFF): text must be valid Unicode"

# A JSON escape that may decode to text Postgres refuses: `\u0000` or a surrogate `\ud800`-`\udfff` (hex
# digits in either case). Only a hint (an escaped backslash before `u0000` matches too, and so does half of a
# valid pair); the parsed body decides.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|d[89a-f][0-9a-f]{2})", re.IGNORECASE)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why Postgres could not store `value` as text (the message for the field), or None if it can."""
    if "\x00" in value:
        return _NUL
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE
    return None


def is_storable(value: str) -> bool:
    """`value` holds no NUL and encodes as UTF-8."""
    return text_problem(value) is None


def _spelt(name: str) -> str:
    """A field name fit to show: a NUL or a lone surrogate in it spelt out as its JSON escape."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", name)


def _refuse(field: str, message: str) -> ApiError:
    return ApiError("validation_error", "invalid request; see details", [{"field": field, "message": message}])


def _first_problem(node, path: str) -> tuple[str, str] | None:
    """(dotted path, message) of the first key or string value Postgres could not store, or None."""
    if isinstance(node, str):
        problem = text_problem(node)
        return (path, problem) if problem else None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = _spelt(key) if isinstance(key, str) else str(key)
        here = f"{path}.{name}" if path else name
        problem = text_problem(key) if isinstance(key, str) else None
        if problem:
            return here, problem
        found = _first_problem(value, here)
        if found:
            return found
    return None


def check_query() -> None:
    """Every request's query string (a before_request hook of every app)."""
    for name, value in request.args.items(multi=True):
        problem = text_problem(name) or text_problem(value)
        if problem:
            raise _refuse(_spelt(name), problem)


def check_json_body() -> None:
    """A JSON body parsed whole by the handler (webargs): for small documents, checked after authentication.

    Not for the ingest path, which reads its body bounded and validates every string in it by pattern.
    """
    if request.mimetype != "application/json":
        return
    data = request.get_data(cache=True)
    # Decoded as webargs decodes it (strict UTF-8), a NUL or a lone surrogate can only come from an escape: a
    # raw NUL is refused by the parser, raw surrogate bytes by the decoder. So bodies without a suspect
    # escape (nearly all) are not parsed twice nor walked.
    if not _SUSPECT_ESCAPE.search(data):
        return
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # not JSON: webargs refuses it as malformed_json
        return
    found = _first_problem(body, "")
    if found is not None:
        field, message = found
        raise _refuse(field or "body", message)
