"""A batch of stream entries, built as they come in.

Each chunk read from the stream is decoded, encoded for COPY and folded into the batch's rollups as soon as
it arrives, so a batch can grow while the previous one is being stored and be closed at any moment (by
size or by age, see pipeline.py) with little left to do: only its rollup rows are written out at the end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from visiontrack.stream import PoisonEntry, decode_entry, decode_fields, fields_dict, letter_fields

from .consumer import Raw
from .copy_encoding import DAY_MS, EncodedEntry, encode_entry, fold_rollups
from .storage import partials_payload


@dataclass
class Batch:
    """Entries read from the stream, encoded, and split into what can be stored and what cannot."""

    raw: list[Raw] = field(default_factory=list)
    good: list[EncodedEntry] = field(default_factory=list)  # one per request (an entry may carry several)
    poison: list[tuple[str, dict, str]] = field(default_factory=list)  # (entry id, dead letter's fields, reason)
    readings: int = 0  # of the good entries
    opened: float = 0.0  # time.monotonic() when its first entry came in
    partials: dict | None = None  # the good entries' 1-minute rollups, folded so far (None: rollups off)
    rollup_rows: bytes | None = None  # the partials as COPY rows, made when the batch is sealed

    @property
    def entries(self) -> int:
        return len(self.raw)

    def age(self) -> float:
        return time.monotonic() - self.opened if self.raw else 0.0


def new_batch(rollups: bool) -> Batch:
    return Batch(partials={} if rollups else None)


def add(batch: Batch, raw: list[Raw], retention_days: int, future_days: int = 1) -> None:
    """Decode, encode and fold `raw` into `batch`. A chunk's poison entries join batch.poison."""
    if not raw:
        return
    if not batch.raw:
        batch.opened = time.monotonic()
    today = int(time.time() * 1000) // DAY_MS
    min_day, max_day = today - retention_days - 1, today + future_days
    good = []
    readings = 0
    for entry_id, fields in raw:
        try:
            entries = decode_fields(entry_id, fields) if type(fields) is list else \
                decode_entry(entry_id, fields_dict(fields))  # claimed entries: XAUTOCLAIM's dicts
        except PoisonEntry as exc:
            batch.poison.append((entry_id, fields_dict(fields), str(exc)))
            continue
        for entry in entries:  # an entry of format 2: each request stored or dead-lettered on its own
            try:
                encoded = encode_entry(entry, min_day, max_day)
            except PoisonEntry as exc:
                batch.poison.append((entry_id, letter_fields(entry, fields), str(exc)))
                continue
            good.append(encoded)
            readings += encoded.count
    batch.raw.extend(raw)
    batch.good.extend(good)
    batch.readings += readings
    if batch.partials is not None:
        fold_rollups(good, batch.partials)


def seal(batch: Batch) -> Batch:
    """Make what is left before the batch can be stored: its rollup rows."""
    if batch.partials is not None and batch.good:
        batch.rollup_rows = partials_payload(batch.partials)
    return batch

