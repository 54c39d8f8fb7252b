"""Cursors and times of the HTTP API."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from visiontrack.errors import ApiError
from visiontrack.web.pagination import decode_cursor, encode_cursor
from visiontrack.web.timefmt import format_ts, from_ms, parse_time


def test_cursor_round_trip_and_shape_check():
    raw = encode_cursor([1_795_748_400_123_000, 5, "temperature"])
    assert "=" not in raw
    assert decode_cursor(raw, (int, int, str)) == [1_795_748_400_123_000, 5, "temperature"]
    for bad in ("", "!!!", encode_cursor([1, 2]), encode_cursor(["x", 2, "t"]), encode_cursor([True, 1, "t"])):
        with pytest.raises(ApiError) as err:
            decode_cursor(bad, (int, int, str))
        assert err.value.details[0]["field"] == "cursor"


def test_times_out_are_utc_with_milliseconds():
    assert format_ts(datetime(2026, 11, 27, 3, 0, 0, 123456, tzinfo=timezone.utc)) == "2026-11-27T03:00:00.123Z"
    assert format_ts(from_ms(1_795_748_400_007)) == "2026-11-27T03:00:00.007Z"


def test_times_in_are_rfc3339_or_epoch_ms():
    assert parse_time("1795748400123") == from_ms(1_795_748_400_123)
    assert parse_time("2026-11-27T04:00:00+01:00") == from_ms(1_795_748_400_000)
    with pytest.raises(ValueError):
        parse_time("yesterday")


@pytest.mark.parametrize("raw", ["\uff11\uff12", "\u0663", "1\u0663", "1_000", "+12", "--12", "1 2", "12.5", ""])
def test_only_ascii_digits_are_epoch_milliseconds(raw):
    """str.isdigit() and int() take other scripts' digits (fullwidth "12" was read as 12 ms) and int() takes
    underscores: anything but ASCII digits goes to the RFC 3339 parser, which refuses it."""
    with pytest.raises(ValueError):
        parse_time(raw)


def test_epoch_milliseconds_may_be_negative():
    assert parse_time("-12") == from_ms(-12)
    assert parse_time("0") == from_ms(0)


def test_body_fields_take_only_their_json_type():
    """2.0 is no integer in a body (as ts and device_id on the ingest path); a JSON integer is a number."""
    from marshmallow import ValidationError

    from visiontrack.web.fields import StrictBoolean, StrictFloat, StrictInteger

    cases = [(StrictInteger(), [7, 2**70], [1.5, 2.0, "7", True, None]),
             (StrictFloat(), [1.5, 7, -0.0], ["1.5", True, "nan"]),
             (StrictBoolean(), [True, False], ["yes", "true", 1, 0, None])]
    for field, good, bad in cases:
        for value in good:
            assert field.deserialize(value) == value
        for value in bad:
            with pytest.raises(ValidationError):
                field.deserialize(value)


def test_integer_query_arguments_are_ascii_digits():
    from marshmallow import ValidationError

    from visiontrack.web.fields import QueryInteger

    assert [QueryInteger().deserialize(v) for v in ("0", "12", "-3", "007")] == [0, 12, -3, 7]
    for value in ("\uff11\uff12", "\u0663", "1_000", "+5", " 5", "5 ", "", "1.0", "1" * 5000):
        with pytest.raises(ValidationError):
            QueryInteger().deserialize(value)


def test_microsecond_conversions_are_exact():
    from visiontrack.web.timefmt import from_micros, to_micros, to_ms

    for us in (0, 1, 1_795_748_400_123_456, -62_135_596_800_000_000):
        assert to_micros(from_micros(us)) == us
    assert to_ms(from_micros(1_795_748_400_123_999)) == 1_795_748_400_123


# --- storable text: one check for JSON bodies, query strings and cursors -----------------------------------------

NUL_MESSAGE = "must not contain a NUL (U+0000) character"
SURROGATE_MESSAGE = "must not contain a lone surrogate (U+D800 to U+DFFF): text must be valid Unicode"


@pytest.mark.parametrize("text,problem", [
    ("", None), ("plain", None), ("\U0001F600 é \uffff", None), ("\\u0000", None),
    ("a\x00b", NUL_MESSAGE), ("\x00", NUL_MESSAGE),
    ("a\ud800", SURROGATE_MESSAGE), ("\udfff", SURROGATE_MESSAGE), ("\ude00\ud83d", SURROGATE_MESSAGE),
    ("\ud800\x00", NUL_MESSAGE),  # the NUL is named first, wherever it is
])
def test_storable_text_has_no_nul_and_encodes_as_utf8(text, problem):
    from visiontrack.web.text_guard import is_storable, text_problem

    assert text_problem(text) == problem
    assert is_storable(text) is (problem is None)


def test_cursors_use_the_same_text_check():
    for text in ("a\x00", "\ud800", "x\udc00y"):
        with pytest.raises(ApiError) as err:
            decode_cursor(encode_cursor([1, text]), (int, str))
        assert err.value.details == [{"field": "cursor", "message": "is not a cursor this API returned"}]
    assert decode_cursor(encode_cursor([1, "\U0001F600"]), (int, str)) == [1, "\U0001F600"]


def _body_problem(raw: bytes, content_type: str = "application/json"):
    """What check_json_body says of `raw`: None, or (field, message)."""
    from flask import Flask

    from visiontrack.web.text_guard import check_json_body

    with Flask("t").test_request_context("/", method="POST", data=raw, content_type=content_type):
        try:
            check_json_body()
        except ApiError as err:
            assert err.code == "validation_error" and err.status == 400 and len(err.details) == 1
            return err.details[0]["field"], err.details[0]["message"]
    return None


@pytest.mark.parametrize("raw,problem", [
    (b'{"name": "a\\u0000"}', ("name", NUL_MESSAGE)),
    (b'{"name": "a\\ud800"}', ("name", SURROGATE_MESSAGE)),
    (b'{"name": "a\\uDBFF"}', ("name", SURROGATE_MESSAGE)),  # the escape's hex digits in either case
    (b'{"name": "a\\uDc0A"}', ("name", SURROGATE_MESSAGE)),
    (b'{"m": {"a": [0, "x", {"b": "\\udfff"}]}}', ("m.a.2.b", SURROGATE_MESSAGE)),
    (b'{"m": {"k\\u0000": 1}}', ("m.k\\u0000", NUL_MESSAGE)),  # a key names itself, the character spelt out
    (b'{"m": {"k\\uD800": 1}}', ("m.k\\ud800", SURROGATE_MESSAGE)),
    (b'["ok", "\\u0000"]', ("1", NUL_MESSAGE)),
    (b'"\\ud800"', ("body", SURROGATE_MESSAGE)),
    # storable: no escape at all, a surrogate pair, an escaped backslash before "u0000", an escaped other char
    (b'{"name": "plain", "n": 1, "l": [null, true]}', None),
    (b'{"name": "\\ud83d\\ude00", "\\uD83D\\uDE00": "\\u00e9"}', None),
    (b'{"path": "C:\\\\u0000", "x": "\\\\ud800"}', None),
    # not JSON, or not labelled JSON: for the parser (malformed_json) or the media-type check to refuse
    (b'{"name": "\\u0000"', None),
    (b'{"name": "\\u0000", }', None),
    ('{"name": "\\u0000"}'.encode("utf-16"), None),
])
def test_the_body_check_names_the_first_unstorable_field(raw, problem):
    assert _body_problem(raw) == problem


def test_the_body_check_is_for_json_bodies_only():
    assert _body_problem(b'{"name": "\\u0000"}', "text/plain") is None
    assert _body_problem(b'{"name": "\\u0000"}', "application/json; charset=utf-8") == ("name", NUL_MESSAGE)


def test_the_body_is_parsed_only_when_the_bytes_hold_a_suspect_escape(monkeypatch):
    from visiontrack.web import text_guard

    parsed = []
    real = text_guard.json.loads
    monkeypatch.setattr(text_guard.json, "loads", lambda s, *a, **k: parsed.append(s) or real(s, *a, **k))
    assert _body_problem(b'{"name": "\\u00e9\\ud7ff\\ue000", "metadata": {"k": "v"}}') is None
    assert parsed == []
    assert _body_problem(b'{"name": "\\U0000"}') is None  # not a JSON escape, but looked at: case-insensitive
    assert len(parsed) == 1


def test_the_query_string_check_names_the_argument():
    from flask import Flask

    from visiontrack.web.text_guard import check_query

    app = Flask("t")
    for query, field in (("q=a%00b", "q"), ("ok=1&a%00=1", "a\\u0000"), ("x=%ED%A0%80&y=%00", "y")):
        with app.test_request_context(f"/?{query}"):
            with pytest.raises(ApiError) as err:
                check_query()
        assert err.value.details == [{"field": field, "message": NUL_MESSAGE}]
    with app.test_request_context("/?q=%C3%A9&r=%F0%9F%98%80"):
        check_query()


# --- database errors: bad input values are 400, anything else stays a 500 -------------------------------------


def _error_app():
    import psycopg2
    import psycopg2.errors
    from flask import Flask

    from visiontrack.web import errors

    app = Flask("t")
    errors.register(app)

    @app.get("/raise/<name>")
    def raise_(name):
        raise psycopg2.DataError("plain") if name == "DataError" else getattr(psycopg2.errors, name)(f"{name}\nLINE 1")

    return app.test_client()


@pytest.mark.parametrize("name", ["NumericValueOutOfRange", "InvalidTextRepresentation", "StringDataRightTruncation",
                                  "DatetimeFieldOverflow", "InvalidDatetimeFormat", "CharacterNotInRepertoire",
                                  "UntranslatableCharacter", "InvalidParameterValue"])
def test_a_value_postgres_refuses_as_input_is_a_400(name, caplog):
    resp = _error_app().get(f"/raise/{name}")
    assert resp.status_code == 400 and resp.json["error"] == "validation_error", resp.json
    assert [r.levelname for r in caplog.records if r.name == "visiontrack.web"] == ["WARNING"]


@pytest.mark.parametrize("name", ["DataError", "DivisionByZero", "InvalidRegularExpression", "ArraySubscriptError",
                                  "NullValueNotAllowed"])
def test_other_data_errors_are_a_500_logged_with_the_traceback(name, caplog):
    resp = _error_app().get(f"/raise/{name}")
    assert resp.status_code == 500 and resp.json["error"] == "internal_error", resp.json
    records = [r for r in caplog.records if r.name == "visiontrack.web"]
    assert len(records) == 1 and records[0].levelname == "ERROR" and records[0].exc_info is not None
