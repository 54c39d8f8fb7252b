"""Keyset pages: every list's page (`keyset_page`), its schema (`page_schema`) and its opaque cursor, the last
row's sort key in base64 JSON. Following one never skips or repeats.

A cursor comes back from the client, so it is input like any other: decode_cursor checks each value's type
*and range* against the shape the endpoint expects, so that a hand-made cursor is a 400 naming `cursor`
rather than an overflow (a datetime, a bigint) or text Postgres refuses (text_guard) deeper down, a 500.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from marshmallow import Schema, fields

from ..errors import ApiError
from .text_guard import is_storable
from .timefmt import to_micros

BIGINT = range(-2**63, 2**63)
"""What a plain `int` in a shape accepts: a value a Postgres bigint holds."""

TIMESTAMP_MICROS = range(to_micros(datetime.min.replace(tzinfo=timezone.utc)),
                         to_micros(datetime.max.replace(tzinfo=timezone.utc)) + 1)
"""Epoch microseconds a Python datetime holds (years 1-9999, inside Postgres' timestamptz range)."""

KeyKind = type | range


def encode_cursor(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _fits(value, kind: KeyKind) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(kind, range):
        return isinstance(value, int) and value in kind
    if kind is int:
        return isinstance(value, int) and value in BIGINT
    if kind is str:  # text Postgres can hold: no NUL, no lone surrogate (JSON's "\ud800" decodes to one)
        return isinstance(value, str) and is_storable(value)
    return isinstance(value, kind)


def decode_cursor(raw: str, shape: tuple[KeyKind, ...]) -> list:
    """The key a cursor holds, checked against `shape`; a 400 naming `cursor` otherwise.

    Each item of `shape` is `int` (any bigint), a `range` (an int within it, e.g. TIMESTAMP_MICROS) or
    `str` (text without NUL, valid as UTF-8); booleans are never ints here.
    """
    try:
        padded = raw + "=" * (-len(raw) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(key, list) or len(key) != len(shape):
            raise ValueError
        if not all(_fits(value, kind) for value, kind in zip(key, shape)):
            raise ValueError
        return key
    except (ValueError, TypeError, RecursionError):  # RecursionError: a deeply nested hand-made "cursor"
        raise ApiError("validation_error", "invalid request; see details",
                       [{"field": "cursor", "message": "is not a cursor this API returned"}]) from None


@dataclass(frozen=True)
class Keyset:
    """The sort key of a list: what its cursor holds (decode_cursor's shape) and how to read it off a row."""

    shape: tuple[KeyKind, ...]
    key_of: Callable[[Any], list]


BY_ID = Keyset((int,), lambda row: [row["id"]])
"""Lists ordered by their rows' bigint `id`."""

Fetch = Callable[[list | None, int], Sequence]
"""fetch(after, n): the first `n` rows after the key `after` (None: from the start), in the list's order."""


def keyset_page(fetch: Fetch, limit: int, cursor: str | None, keyset: Keyset = BY_ID) -> dict:
    """One page: {"items": up to `limit` rows, "next_cursor": the last row's key if more follow, else None}.

    The cursor is checked before anything is fetched. One row more than the page is fetched: it only tells
    whether another page follows.
    """
    after = decode_cursor(cursor, keyset.shape) if cursor else None
    rows = fetch(after, limit + 1)
    items = rows[:limit]
    next_cursor = encode_cursor(keyset.key_of(items[-1])) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


def page_schema(name: str, item: type[Schema]) -> type[Schema]:
    """The schema of a page of `item`s, named `name` in the OpenAPI documents (e.g. "DevicePage")."""
    return Schema.from_dict({
        "items": fields.List(fields.Nested(item)),
        "next_cursor": fields.String(allow_none=True),
    }, name=f"{name}Schema")
