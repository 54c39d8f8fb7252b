"""marshmallow fields shared by the services."""
from __future__ import annotations

from datetime import datetime

from marshmallow import fields

from .timefmt import format_ts, parse_time


class Timestamp(fields.Field):
    """RFC 3339 UTC with milliseconds out; RFC 3339 (any offset) or epoch milliseconds in."""

    default_error_messages = {"invalid": "must be an RFC 3339 time or integer epoch milliseconds"}

    def _serialize(self, value: datetime | None, attr, obj, **kwargs):
        return None if value is None else format_ts(value)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.make_error("invalid")
        try:
            return parse_time(str(value))
        except ValueError:
            raise self.make_error("invalid") from None
