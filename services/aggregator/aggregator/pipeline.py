"""Draining one stream shard into Postgres: read a batch, store it in one transaction, then ack.

While Postgres stores one batch (on a writer thread), the next is read and encoded. Claims, redelivery and
dead letters: see docs/design.md, "Delivery semantics".
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg2

from visiontrack.stream import PoisonEntry, decode_entry

from . import metrics
from .consumer import Raw, StreamConsumer
from .copy_encoding import DAY_MS, EncodedEntry, encode_entry
from .storage import TelemetryStorage, rollup_payload

log = logging.getLogger("aggregator.pipeline")

# Errors that say nothing about the data: leave the batch pending and try again later.
TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)


@dataclass
class DrainResult:
    entries: int = 0
    readings: int = 0
    inserted: int = 0
    dead_letters: int = 0
    more: bool = False
    seconds: float = 0.0

    def add(self, other: "DrainResult") -> None:
        self.entries += other.entries
        self.readings += other.readings
        self.inserted += other.inserted
        self.dead_letters += other.dead_letters


@dataclass
class Batch:
    """A batch read from the stream, encoded, and split into what can be stored and what cannot."""

    raw: list[Raw]
    good: list[EncodedEntry]
    poison: list[tuple[str, dict, str]]
    rollup_rows: bytes | None = None  # the good entries' rollups, folded while the previous batch is stored


@dataclass
class Pipeline:
    consumer: StreamConsumer
    storage: TelemetryStorage
    batch_entries: int  # most entries per batch
    retention_days: int
    batch_readings: int  # readings per batch aimed at, whatever the entries' size (VT_BATCH_READINGS)
    future_days: int = 1
    _own_pending_done: bool = field(default=False, init=False)
    _readings_per_entry: float = field(default=100.0, init=False)
    _writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "pg-writer"), init=False)

    def _day_range(self) -> tuple[int, int]:
        today = int(time.time() * 1000) // DAY_MS
        return today - self.retention_days - 1, today + self.future_days

    def _next_count(self) -> int:
        return max(1, min(self.batch_entries, int(self.batch_readings / self._readings_per_entry)))

    def prepare(self, raw: list[Raw]) -> Batch:
        min_day, max_day = self._day_range()
        batch = Batch(raw, [], [])
        for entry_id, fields in raw:
            try:
                batch.good.append(encode_entry(decode_entry(entry_id, fields), min_day, max_day))
            except PoisonEntry as exc:
                batch.poison.append((entry_id, fields, str(exc)))
        if batch.good:  # follow the entries' size, so a batch stays near batch_readings
            size = sum(e.count for e in batch.good) / len(batch.good)
            self._readings_per_entry = 0.7 * self._readings_per_entry + 0.3 * size
            if self.storage.rollups:
                batch.rollup_rows = rollup_payload(batch.good)
        return batch

    def store(self, batch: Batch) -> DrainResult:
        """Write the batch's good entries in one transaction (poison ones are added to batch.poison)."""
        result = DrainResult(entries=len(batch.raw))
        if not batch.good:
            return result
        started = time.perf_counter()
        try:
            stored = self.storage.store(batch.good, batch.rollup_rows)
            result.readings, result.inserted = stored.readings, stored.inserted
        except TRANSIENT:
            raise
        except psycopg2.Error as exc:
            log.warning("batch of %d entries refused (%s); storing entries one by one", len(batch.good), exc)
            result.readings, result.inserted = self._store_one_by_one(batch)
        metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_READINGS.observe(result.readings)
        return result

    def finish(self, batch: Batch, result: DrainResult) -> DrainResult:
        """After the commit: dead-letter what could not be stored, ack the rest."""
        result.dead_letters = self.consumer.dead_letter(batch.poison)
        dead = {entry_id for entry_id, _, _ in batch.poison}
        self.consumer.ack(e.entry.entry_id for e in batch.good if e.entry.entry_id not in dead)
        metrics.record(result.entries, result.readings, result.inserted, result.dead_letters, self.consumer.key)
        return result

    def process(self, raw: list[Raw]) -> DrainResult:
        """Store one batch and ack it, all on this thread."""
        batch = self.prepare(raw)
        return self.finish(batch, self.store(batch))

    def _store_one_by_one(self, batch: Batch) -> tuple[int, int]:
        fields = dict(batch.raw)
        readings = inserted = 0
        for encoded in batch.good:
            try:
                stored = self.storage.store([encoded])
                readings += stored.readings
                inserted += stored.inserted
            except TRANSIENT:
                raise
            except psycopg2.Error as exc:
                entry_id = encoded.entry.entry_id
                batch.poison.append((entry_id, fields[entry_id], f"postgres refused it: {exc}".strip()))
        return readings, inserted

    def drain(self, budget_seconds: float) -> DrainResult:
        """Store until the shard is empty or the budget is spent; `more` says whether work is left."""
        started = time.monotonic()
        total = DrainResult()
        fresh, tired = self.consumer.claim(self._next_count())
        moved = self.consumer.dead_letter([(i, f, "delivered too many times without being stored") for i, f in tired])
        total.dead_letters += moved
        if moved:
            metrics.DEAD_LETTERS.inc(moved)
        if fresh:
            total.add(self.process(fresh))
        while not self._own_pending_done:  # after a restart: what this consumer had taken but not acked
            if time.monotonic() - started >= budget_seconds:
                total.more, total.seconds = True, time.monotonic() - started
                return total
            raw = self.consumer.read(self._next_count(), "0")
            if not raw:
                self._own_pending_done = True
                self.consumer.refused.clear()  # only this phase reads past them; claim() takes them from here
            else:
                total.add(self.process(raw))  # not overlapped: re-reading "0" would return in-flight entries
        in_flight: tuple[Batch, Future] | None = None
        try:
            while True:
                if time.monotonic() - started >= budget_seconds:
                    total.more = True
                    break
                raw = self.consumer.read(self._next_count(), ">")
                if not raw:
                    break
                batch = self.prepare(raw)  # overlaps with the previous batch's COPY and commit
                if in_flight is not None:
                    total.add(self.finish(in_flight[0], in_flight[1].result()))
                in_flight = (batch, self._writer.submit(self.store, batch))
        finally:
            if in_flight is not None:
                total.add(self.finish(in_flight[0], in_flight[1].result()))
        total.seconds = time.monotonic() - started
        return total
