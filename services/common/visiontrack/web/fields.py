"""marshmallow fields shared by the services."""
from __future__ import annotations

from datetime import datetime

from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from werkzeug.routing import IntegerConverter

from ..validation import ASCII_INTEGER, METRIC_PATTERN, RFC3339_RE
from .timefmt import format_ts, parse_time

MAX_ID = 2**63 - 1  # Postgres bigint: a larger id could only fail in the database, as a 500
ID_RANGE = validate.Range(min=1, max=MAX_ID)


class WholeMatch(validate.Regexp):
    """A Regexp matched against the whole value (re.fullmatch), so the pattern's `$` lets no trailing
    newline through; the pattern itself stays the contract's, which is what the OpenAPI document shows."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


# A metric name, as both writers take it (docs/contracts.md section 3): every endpoint that reads or
# names one (queries, alert rules) refuses any other with a 400 naming the field.
METRIC = WholeMatch(METRIC_PATTERN, error="is not a metric name")


class IdConverter(IntegerConverter):
    """`<id:name>` in a route: a positive id that fits a bigint; anything else is no such resource (404)."""

    regex = r"[0-9]+"  # werkzeug's \d+ also matches other scripts' digits, which int() reads ("１２" is 12)

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=MAX_ID)




class QueryInteger(fields.Integer):
    """An integer query argument: ASCII digits with an optional leading '-'."""

    default_error_messages = {"invalid": "must be an integer (ASCII digits)"}

    def _validated(self, value):
        if isinstance(value, str) and ASCII_INTEGER.fullmatch(value) is None:
            raise self.make_error("invalid")
        return super()._validated(value)


# JSON bodies are taken at their JSON types: marshmallow's own fields convert ("30" and 1.5 are integers, "1.5"
# a number, "yes" and 1 booleans), so that a client's mistake is stored as something it did not send.


class StrictInteger(fields.Integer):
    """A JSON integer: not a string, a boolean, nor a float, even 2.0 (the ingest path refuses that for ts and
    device_id too)."""

    default_error_messages = {"invalid": "must be an integer"}

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)


class StrictFloat(fields.Float):
    """A JSON number (integer or not): not a string nor a boolean."""

    default_error_messages = {"invalid": "must be a number"}

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    """A JSON boolean: true or false, not "yes", "true" nor 1."""

    default_error_messages = {"invalid": "must be true or false"}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Timestamp(fields.Field):
    """RFC 3339 UTC with milliseconds out; RFC 3339 (any offset) or epoch milliseconds in."""

    default_error_messages = {"invalid": "must be an RFC 3339 time or integer epoch milliseconds"}
    # For the documents: the shapes parse_time takes, from its own expressions (the days of each month and the
    # range of a datetime are checked beyond them). They read the same in Python and ECMA-262 expressions.
    PATTERN = f"^(?:{ASCII_INTEGER.pattern}|{RFC3339_RE.pattern})$"

    def __init__(self, **kwargs):
        kwargs["metadata"] = {"pattern": self.PATTERN, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _serialize(self, value: datetime | None, attr, obj, **kwargs):
        return None if value is None else format_ts(value)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.make_error("invalid")
        try:
            return parse_time(str(value))
        except ValueError:
            raise self.make_error("invalid") from None


class TimeRangeArgs(Schema):
    """`from` (inclusive) and `to` (exclusive) query arguments; `to` must come after `from`.

    Subclasses may redeclare either field (with their own description); the check stays.
    """

    from_ = Timestamp(data_key="from", load_default=None, metadata={"description": "Inclusive start."})
    to = Timestamp(load_default=None, metadata={"description": "Exclusive end."})

    @validates_schema
    def _ordered(self, data, **_):
        if data.get("from_") is not None and data.get("to") is not None and data["from_"] >= data["to"]:
            raise ValidationError("must be later than from", "to")
