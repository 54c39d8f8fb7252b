"""Draining one stream shard into Postgres: read a batch, store it in one transaction, then ack.

At-least-once transport, exactly-once effect: a batch is acked only after its commit, a redelivered
entry finds its rows already there (duplicates dropped and counted), and an entry that can never be
stored goes to the dead-letter stream instead of blocking the shard.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg2

from visiontrack.stream import PoisonEntry, decode_entry

from . import metrics
from .consumer import Raw, StreamConsumer
from .copy_encoding import DAY_MS, EncodedEntry, encode_entry
from .storage import TelemetryStorage

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
class Pipeline:
    consumer: StreamConsumer
    storage: TelemetryStorage
    batch_entries: int
    retention_days: int
    future_days: int = 1
    _own_pending_done: bool = field(default=False, init=False)

    def _day_range(self) -> tuple[int, int]:
        today = int(time.time() * 1000) // DAY_MS
        return today - self.retention_days - 1, today + self.future_days

    def process(self, raw: list[Raw]) -> DrainResult:
        """Store one batch and ack it; returns what happened."""
        result = DrainResult(entries=len(raw))
        min_day, max_day = self._day_range()
        good: list[EncodedEntry] = []
        poison: list[tuple[str, dict, str]] = []
        for entry_id, fields in raw:
            try:
                good.append(encode_entry(decode_entry(entry_id, fields), min_day, max_day))
            except PoisonEntry as exc:
                poison.append((entry_id, fields, str(exc)))
        if good:
            started = time.perf_counter()
            try:
                stored = self.storage.store(good)
                result.readings, result.inserted = stored.readings, stored.inserted
            except TRANSIENT:
                raise
            except psycopg2.Error as exc:
                log.warning("batch of %d entries refused (%s); storing entries one by one", len(good), exc)
                result.readings, result.inserted = self._store_one_by_one(good, dict(raw), poison)
            metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
            metrics.BATCH_READINGS.observe(result.readings)
        self.consumer.dead_letter(poison)
        dead = {entry_id for entry_id, _, _ in poison}
        self.consumer.ack(e.entry.entry_id for e in good if e.entry.entry_id not in dead)
        result.dead_letters = len(poison)
        metrics.record(result.entries, result.readings, result.inserted, len(poison), self.consumer.key)
        return result

    def _store_one_by_one(self, good: list[EncodedEntry], fields: dict, poison: list) -> tuple[int, int]:
        readings = inserted = 0
        for encoded in good:
            try:
                stored = self.storage.store([encoded])
                readings += stored.readings
                inserted += stored.inserted
            except TRANSIENT:
                raise
            except psycopg2.Error as exc:
                entry_id = encoded.entry.entry_id
                poison.append((entry_id, fields[entry_id], f"postgres refused it: {exc}".strip()))
        return readings, inserted

    def drain(self, budget_seconds: float) -> DrainResult:
        """Store until the shard is empty or the budget is spent; `more` says whether work is left."""
        started = time.monotonic()
        total = DrainResult()
        fresh, tired = self.consumer.claim(self.batch_entries)
        self.consumer.dead_letter([(i, f, "delivered too many times without being stored") for i, f in tired])
        total.dead_letters += len(tired)
        if fresh:
            total.add(self.process(fresh))
        start = ">" if self._own_pending_done else "0"
        while True:
            if time.monotonic() - started >= budget_seconds:
                total.more = True
                break
            raw = self.consumer.read(self.batch_entries, start)
            if not raw:
                if start == "0":
                    start, self._own_pending_done = ">", True
                    continue
                break
            total.add(self.process(raw))
        total.seconds = time.monotonic() - started
        return total

