"""The telemetry stream entry format (docs/contracts.md, section 1), shared by writers and the aggregator."""
from __future__ import annotations

import json

import orjson
from dataclasses import dataclass
from typing import Sequence

FORMAT_VERSION = "1"  # one request: fields v, d, r, at
GROUP_FORMAT_VERSION = "2"  # several requests: fields v, g

Reading = tuple[str, int, float]  # (metric, ts_ms, value)


def shard_keys(base_key: str, shards: int) -> list[str]:
    if shards == 1:
        return [base_key]
    return [f"{base_key}:{{{i}}}" for i in range(shards)]


def shard_key_for(base_key: str, shards: int, device_id: int) -> str:
    return base_key if shards == 1 else f"{base_key}:{{{device_id % shards}}}"


def encode_entry(device_id: int, readings: Sequence[Reading], received_ms: int) -> dict[str, str]:
    """The fields of one XADD: small on purpose, one entry per accepted request."""
    return {
        "v": FORMAT_VERSION,
        "d": str(device_id),
        "r": json.dumps(readings, separators=(",", ":"), allow_nan=False),
        "at": str(received_ms),
    }


class PoisonEntry(ValueError):
    """An entry that can never be stored; the message is the dead-letter reason."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a quarter of a reading's decoding
class Entry:
    """One request's readings from a stream entry: the whole entry (format 1, `part` None) or one of the
    requests an entry of format 2 carries (`part` its index; they share the entry id)."""
    entry_id: str
    device_id: int
    readings: list[Reading]
    received_ms: int
    part: int | None = None


def _field(fields: dict, name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise PoisonEntry(f"missing field {name!r}")
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(entry_id: str, fields: dict) -> list[Entry]:
    """Parse one entry's envelope into its requests (one for format 1); raise PoisonEntry with a reason for
    anything unreadable.

    The readings themselves are checked where they are encoded for Postgres, in the same pass.
    """
    try:
        version = _field(fields, "v")
        if version == GROUP_FORMAT_VERSION:
            return _decode_group(entry_id, fields["g"])
        if version != FORMAT_VERSION:
            raise PoisonEntry(f"unknown format version {version!r}")
        device_id = int(_field(fields, "d"))
        received_ms = int(_field(fields, "at"))
        readings = orjson.loads(fields["r"])  # rejects NaN and infinities; ~3x the stdlib's speed
    except PoisonEntry:
        raise
    except KeyError as exc:
        raise PoisonEntry(f"missing field {exc.args[0]!r}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonEntry(f"unreadable entry: {exc}") from None
    if device_id <= 0:
        raise PoisonEntry(f"bad device id {device_id}")
    if not isinstance(readings, list) or not readings:
        raise PoisonEntry("field 'r' is not a non-empty array")
    return [Entry(entry_id, device_id, readings, received_ms)]


def _decode_group(entry_id: str, raw) -> list[Entry]:
    """The requests of an entry of format 2: field `g`, a JSON array of [device_id, at_ms, readings]."""
    parts = orjson.loads(raw)
    if type(parts) is not list or not parts:
        raise PoisonEntry("field 'g' is not a non-empty array")
    out = []
    for index, part in enumerate(parts):
        if type(part) is not list or len(part) != 3:
            raise PoisonEntry(f"part {index} of 'g' is not [device_id, at_ms, readings]")
        device_id, received_ms, readings = part
        if type(device_id) is not int or device_id <= 0:
            raise PoisonEntry(f"part {index} of 'g': bad device id {device_id!r}")
        if type(received_ms) is not int:
            raise PoisonEntry(f"part {index} of 'g': bad receive time {received_ms!r}")
        if type(readings) is not list or not readings:
            raise PoisonEntry(f"part {index} of 'g': readings are not a non-empty array")
        out.append(Entry(entry_id, device_id, readings, received_ms, index))
    return out


def decode_fields(entry_id: str, fields: list) -> list[Entry]:
    """Parse one entry from its field list as XREADGROUP returns it ([name, value, name, value, ...]).

    The writers' own layouts (`v`, `d`, `r`, `at` of format 1; `v`, `g` of format 2, in that order) are read
    by position, which spares building a dict per entry; any other layout, and anything that does not parse,
    goes through decode_entry, the one place that says why an entry is poison."""
    if len(fields) == 8 and fields[0] == b"v" and fields[1] == b"1" and fields[2] == b"d" and fields[4] == b"r" \
            and fields[6] == b"at":
        try:
            device_id = int(fields[3])
            received_ms = int(fields[7])
            readings = orjson.loads(fields[5])
        except ValueError:
            pass
        else:
            if device_id > 0 and type(readings) is list and readings:
                return [Entry(entry_id, device_id, readings, received_ms)]
    elif len(fields) == 4 and fields[0] == b"v" and fields[1] == b"2" and fields[2] == b"g":
        try:
            return _decode_group(entry_id, fields[3])
        except (PoisonEntry, ValueError):
            pass
    return decode_entry(entry_id, fields_dict(fields))


def letter_fields(entry: Entry, fields: list | dict) -> dict:
    """What a dead letter of `entry` carries: the stream entry's own fields for a whole entry (format 1), the
    request alone in format 1 plus its `part` index for one request of a format-2 entry (the others, stored,
    stay out of the dead-letter stream)."""
    if entry.part is None:
        return fields_dict(fields)
    return {**encode_entry(entry.device_id, entry.readings, entry.received_ms), "part": str(entry.part)}


def fields_dict(fields: list | dict) -> dict:
    """An entry's fields as a dict of text names, from XREADGROUP's flat list (or a dict already)."""
    pairs = fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2])
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in pairs}


def backlog(redis, key: str, group: str) -> int:
    """Entries of `key` the group has not finished: lag + pending, or XLEN when Redis cannot tell."""
    try:
        groups = redis.xinfo_groups(key)
    except Exception as exc:  # no such key: nothing is waiting
        if "no such key" in str(exc).lower():
            return 0
        raise
    for info in groups:
        name = info.get("name")
        name = name.decode() if isinstance(name, bytes) else name
        if name == group:
            lag = info.get("lag")
            if lag is None:
                break
            return int(lag) + int(info.get("pending", 0))
    return int(redis.xlen(key))
