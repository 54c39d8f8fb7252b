"""Stream entries as rows of Postgres' binary COPY format, checked in the same pass.

Binary COPY spares Postgres parsing text timestamps and spares Python formatting them: a reading becomes
three struct packs. Anything that cannot be stored raises PoisonEntry for its whole entry.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from visiontrack.stream import Entry, PoisonEntry

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, where Postgres timestamps count from
DAY_MS = 86_400_000

_ROW_HEAD = struct.Struct(">hiq")  # 4 fields; int8 device_id
_ROW_TAIL = struct.Struct(">iqid")  # int8 ts (µs since 2000); float8 value
_METRIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
_metric_fields: dict[str, bytes] = {}  # metric name -> its encoded field; names repeat, checks don't need to


def _metric_field(name) -> bytes:
    encoded = _metric_fields.get(name)
    if encoded is None:
        if not isinstance(name, str) or not _METRIC_RE.fullmatch(name):
            raise PoisonEntry(f"bad metric name {name!r}")
        raw = name.encode()
        encoded = struct.pack(">i", len(raw)) + raw
        if len(_metric_fields) < 100_000:
            _metric_fields[name] = encoded
    return encoded


@dataclass(slots=True)
class EncodedEntry:
    entry: Entry
    rows: bytes
    count: int
    days: set[int]  # UTC days (epoch days) the readings fall on


def encode_entry(entry: Entry, min_day: int, max_day: int) -> EncodedEntry:
    """Encode one entry's readings; days outside [min_day, max_day] make the entry poison."""
    head = _ROW_HEAD.pack(4, 8, entry.device_id)
    pack_tail = _ROW_TAIL.pack
    parts: list[bytes] = []
    days: set[int] = set()
    try:
        for metric, ts_ms, value in entry.readings:
            if type(ts_ms) is not int:
                raise PoisonEntry(f"bad timestamp {ts_ms!r}")
            if type(value) is not float and type(value) is not int or value - value != 0:
                raise PoisonEntry(f"bad value {value!r}")
            parts.append(head)
            parts.append(_metric_field(metric))
            parts.append(pack_tail(8, (ts_ms - PG_EPOCH_MS) * 1000, 8, value))
            days.add(ts_ms // DAY_MS)
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        if isinstance(exc, PoisonEntry):
            raise
        raise PoisonEntry(f"reading is not [metric, ts_ms, value]: {exc}") from None
    if min(days) < min_day or max(days) > max_day:
        raise PoisonEntry("timestamp outside the storable range (retention or future skew)")
    return EncodedEntry(entry, b"".join(parts), len(entry.readings), days)
