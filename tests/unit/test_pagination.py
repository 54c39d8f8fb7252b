"""Keyset pages (visiontrack.web.pagination): the helper all four lists use, and the schema of their pages."""
from __future__ import annotations

import pytest
from marshmallow import Schema, fields

from visiontrack.errors import ApiError
from visiontrack.web.pagination import Keyset, decode_cursor, encode_cursor, keyset_page, page_schema

ROWS = [{"id": i} for i in range(1, 8)]


def _fetch(calls: list):
    def fetch(after, n):
        calls.append((after, n))
        start = after[0] if after else 0
        return [r for r in ROWS if r["id"] > start][:n]
    return fetch


def test_a_page_fetches_one_row_more_and_names_the_next_by_its_last_key():
    calls = []
    page = keyset_page(_fetch(calls), 3, None)
    assert page["items"] == ROWS[:3] and calls == [(None, 4)]
    assert decode_cursor(page["next_cursor"], (int,)) == [3]


def test_following_the_cursors_gives_every_row_once_and_ends_with_none():
    seen, cursor = [], None
    while True:
        page = keyset_page(_fetch([]), 3, cursor)
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ROWS


def test_a_bad_cursor_is_a_400_before_anything_is_fetched():
    calls = []
    with pytest.raises(ApiError) as err:
        keyset_page(_fetch(calls), 3, encode_cursor(["x"]))
    assert err.value.details[0]["field"] == "cursor" and calls == []


def test_a_composite_key_follows_its_keyset():
    keyset = Keyset((int, str), lambda row: [row[0], row[1]])
    page = keyset_page(lambda after, n: [(1, "a"), (2, "b")][:n], 1, None, keyset)
    assert decode_cursor(page["next_cursor"], keyset.shape) == [1, "a"]


def test_the_page_schema_is_named_and_dumps_items_and_cursor():
    class ThingSchema(Schema):
        id = fields.Integer()

    page = page_schema("ThingPage", ThingSchema)
    assert page.__name__ == "ThingPageSchema"
    assert page().dump({"items": [{"id": 1}], "next_cursor": None}) == {"items": [{"id": 1}], "next_cursor": None}
