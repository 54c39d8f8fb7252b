"""Stream entries as rows of Postgres' binary COPY format, checked in the same pass.

Binary COPY spares Postgres parsing text timestamps and spares Python formatting them: a reading becomes
one struct pack. Anything that cannot be stored raises PoisonEntry for its whole entry. The 1-minute rollup
rows of a batch (`fold_rollups`, from entries that passed) are written in the same format.
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

_METRIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")

# metric name -> (pack, name length, name bytes): one struct call writes a whole row:
# 4 fields; int8 device_id; text metric; int8 ts (µs since 2000); float8 value.
_row_packers: dict[str, tuple] = {}


def _row_packer(name) -> tuple:
    packer = _row_packers.get(name)
    if packer is None:
        if not isinstance(name, str) or not _METRIC_RE.fullmatch(name):
            raise PoisonEntry(f"bad metric name {name!r}")
        raw = name.encode()
        packer = (struct.Struct(f">hiqi{len(raw)}siqid").pack, len(raw), raw)
        if len(_row_packers) < 100_000:  # names repeat; the cap only guards against a flood of new ones
            _row_packers[name] = packer
    return packer


# A partial rollup: [count, sum, min, max, newest ts_ms, value at the newest ts_ms].
Partial = list
MINUTE_MS = 60_000


@dataclass(slots=True)
class EncodedEntry:
    entry: Entry
    rows: bytes
    count: int
    first_day: int  # UTC days (days since the epoch) of the earliest and latest reading
    last_day: int


def encode_entry(entry: Entry, min_day: int, max_day: int) -> EncodedEntry:
    """Encode one entry's readings; days outside [min_day, max_day] make the entry poison."""
    device_id = entry.device_id
    readings = entry.readings
    packers = _row_packers
    try:
        if len(readings) == 1:  # the commonest entry (a device's one-reading request): no list, no join
            metric, ts_ms, value = readings[0]
            if type(ts_ms) is not int:
                raise PoisonEntry(f"bad timestamp {ts_ms!r}")
            if type(value) is not float and type(value) is not int or value - value != 0:
                raise PoisonEntry(f"bad value {value!r}")
            pack, length, name = packers.get(metric) or _row_packer(metric)
            rows = pack(4, 8, device_id, length, name, 8, (ts_ms - PG_EPOCH_MS) * 1000, 8, value)
            lo = hi = ts_ms
            count = 1
        else:
            parts: list[bytes] = []
            append = parts.append
            lo, hi = 1 << 62, -(1 << 62)
            for metric, ts_ms, value in readings:
                if type(ts_ms) is not int:
                    raise PoisonEntry(f"bad timestamp {ts_ms!r}")
                if type(value) is not float and type(value) is not int or value - value != 0:
                    raise PoisonEntry(f"bad value {value!r}")
                pack, length, name = packers.get(metric) or _row_packer(metric)
                append(pack(4, 8, device_id, length, name, 8, (ts_ms - PG_EPOCH_MS) * 1000, 8, value))
                if ts_ms < lo:
                    lo = ts_ms
                if ts_ms > hi:
                    hi = ts_ms
            rows = b"".join(parts)
            count = len(parts)
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        if isinstance(exc, PoisonEntry):
            raise
        raise PoisonEntry(f"reading is not [metric, ts_ms, value]: {exc}") from None
    first_day, last_day = lo // DAY_MS, hi // DAY_MS
    if first_day < min_day or last_day > max_day:
        raise PoisonEntry("timestamp outside the storable range (retention or future skew)")
    return EncodedEntry(entry, rows, count, first_day, last_day)


def fold_rollups(batch: list[EncodedEntry], merged: dict | None = None) -> dict[tuple[int, str, int], Partial]:
    """The batch's readings folded per (device, metric, UTC minute since the epoch), in one pass straight
    into the batch's partials (`merged`, when a batch is folded as its entries come in): an entry of one
    reading (the commonest) costs one dict probe, not a partial of its own merged afterwards. The entries
    were checked when they were encoded."""
    if merged is None:
        merged = {}
    get = merged.get
    for encoded in batch:
        device_id = encoded.entry.device_id
        for metric, ts_ms, value in encoded.entry.readings:
            key = (device_id, metric, ts_ms // MINUTE_MS)
            part = get(key)
            if part is None:
                merged[key] = [1, value, value, value, ts_ms, value]
                continue
            part[0] += 1
            part[1] += value
            if value < part[2]:
                part[2] = value
            if value > part[3]:
                part[3] = value
            if ts_ms >= part[4]:
                part[4] = ts_ms
                part[5] = value
    return merged


# Rows of the per-batch rollup staging table, binary COPY: device_id int8, metric text, bucket timestamptz,
# count int8, sum/min/max float8, newest ts timestamptz, its value float8.
_rollup_packers: dict[int, object] = {}


def encode_rollup_row(device_id: int, metric: str, minute: int, part: Partial) -> bytes:
    raw = metric.encode()
    pack = _rollup_packers.get(len(raw))
    if pack is None:
        pack = _rollup_packers[len(raw)] = struct.Struct(f">hiqi{len(raw)}siqiqidididiqid").pack
    count, total, lo, hi, last_ms, last_value = part
    return pack(9, 8, device_id, len(raw), raw, 8, (minute * MINUTE_MS - PG_EPOCH_MS) * 1000, 8, count,
                8, float(total), 8, float(lo), 8, float(hi), 8, (last_ms - PG_EPOCH_MS) * 1000, 8, float(last_value))
