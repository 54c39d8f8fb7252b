"""Draining one stream shard into Postgres: read a batch, store it in one transaction, then ack.

While Postgres stores one batch (on a writer thread), the next is read and encoded. A batch is closed by
size (VT_BATCH_READINGS, VT_BATCH_ENTRIES) or by age (VT_BATCH_MAX_WAIT_MS), whichever comes first, and a
listening drain waits on the stream for the next entry instead of returning when it is empty: see
docs/design.md, "Draining". Claims, redelivery and dead letters: "Delivery semantics".
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import psycopg2

from visiontrack.stream import letter_fields

from . import metrics
from .batching import Batch, add, new_batch, seal
from .consumer import Raw, StreamConsumer
from .storage import TelemetryStorage

log = logging.getLogger("aggregator.pipeline")

# Errors that say nothing about the data: leave the batch pending and try again later.
TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)
# After a read that found less than it asked for, the next waits this long (or until the batch in flight is
# stored, or the batch's age is up): entries then come in chunks, not one round trip each.
IDLE_SLICE_SECONDS = 0.005
# Longest a listening drain's read blocks at once; the budget is checked between two.
LONGEST_BLOCK_SECONDS = 1.0
# A drain beside a shard's listener (a helper) returns once the oldest entry it reads is younger than this:
# the listener keeps up alone, in larger batches than two drains splitting the entries would make.
CAUGHT_UP_SECONDS = 0.1
# A listener whose oldest entry read is older than this asks for a helper, at most once per HELP_EVERY.
FALLING_BEHIND_SECONDS = 0.5
HELP_EVERY_SECONDS = 1.0


def entry_age_seconds(entry_id: str) -> float:
    """How long ago Redis appended an entry (its id starts with Redis' clock, in ms)."""
    return time.time() - int(entry_id.split("-", 1)[0]) / 1000


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
    batch_entries: int  # most entries per batch
    retention_days: int
    batch_readings: int  # readings per batch aimed at, whatever the entries' size (VT_BATCH_READINGS)
    future_days: int = 1
    max_wait_seconds: float = 0.05  # how old a batch may grow before it is closed (VT_BATCH_MAX_WAIT_MS)
    _own_pending_done: bool = field(default=False, init=False)
    _readings_per_entry: float = field(default=100.0, init=False)
    _help_asked_at: float = field(default=float("-inf"), init=False)
    _writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "pg-writer"), init=False)

    def _next_count(self) -> int:
        return max(1, min(self.batch_entries, int(self.batch_readings / self._readings_per_entry)))

    def _seal(self, batch: Batch) -> Batch:
        if batch.good:  # follow the entries' size (readings per stream entry), so a batch stays near batch_readings
            size = batch.readings / len({encoded.entry.entry_id for encoded in batch.good})
            self._readings_per_entry = 0.7 * self._readings_per_entry + 0.3 * size
        return seal(batch)

    def prepare(self, raw: list[Raw]) -> Batch:
        batch = new_batch(self.storage.rollups)
        add(batch, raw, self.retention_days, self.future_days)
        return self._seal(batch)

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
        self.consumer.ack(dict.fromkeys(e.entry.entry_id for e in batch.good if e.entry.entry_id not in dead))
        metrics.record(result.entries, result.readings, result.inserted, result.dead_letters, self.consumer.key)
        return result

    def process(self, raw: list[Raw]) -> DrainResult:
        """Store one batch and ack it, all on this thread."""
        batch = self.prepare(raw)
        return self.finish(batch, self.store(batch))

    def _ask_for_help(self, ask: Callable[[], None]) -> None:
        now = time.monotonic()
        if now - self._help_asked_at >= HELP_EVERY_SECONDS:
            self._help_asked_at = now
            ask()

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
                entry = encoded.entry
                batch.poison.append((entry.entry_id, letter_fields(entry, fields[entry.entry_id]),
                                     f"postgres refused it: {exc}".strip()))
        return readings, inserted

    def drain(self, budget_seconds: float, listen: bool = False, helper: bool = False,
              ask_for_help: Callable[[], None] | None = None) -> DrainResult:
        """Store until the budget is spent, or until the shard is empty unless `listen`; `more` says whether
        work is left. Listening, an empty shard is waited on (a blocking read), and a batch that is neither
        full nor old enough waits for more entries, so a quiet shard's readings are stored within
        max_wait_seconds and a busy one's in full batches; a listener that falls behind calls `ask_for_help`.
        A `helper` (another drain listens on the shard) also returns once it has caught up with the stream."""
        started = time.monotonic()
        deadline = started + budget_seconds
        total = DrainResult()
        fresh, tired = self.consumer.claim(self._next_count())
        moved = self.consumer.dead_letter([(i, f, "delivered too many times without being stored") for i, f in tired])
        total.dead_letters += moved
        if moved:
            metrics.DEAD_LETTERS.inc(moved)
        if fresh:
            total.add(self.process(fresh))
        while not self._own_pending_done:  # after a restart: what this consumer had taken but not acked
            if time.monotonic() >= deadline:
                total.more, total.seconds = True, time.monotonic() - started
                return total
            raw = self.consumer.read(self._next_count(), "0")
            if not raw:
                self._own_pending_done = True
                self.consumer.refused.clear()  # only this phase reads past them; claim() takes them from here
            else:
                total.add(self.process(raw))  # not overlapped: re-reading "0" would return in-flight entries
        batch, target = new_batch(self.storage.rollups), self._next_count()
        in_flight: tuple[Batch, Future] | None = None
        caught_up = False
        try:
            while True:
                over = time.monotonic() >= deadline
                stop = over or caught_up
                if in_flight is not None and in_flight[1].done():
                    total.add(self.finish(in_flight[0], in_flight[1].result()))
                    in_flight = None
                if batch.raw:
                    full = batch.entries >= target or batch.readings >= self.batch_readings
                    if full or stop or not listen or batch.age() >= self.max_wait_seconds:
                        if in_flight is None:  # close it: store it while the next one is read
                            in_flight = (batch, self._writer.submit(self.store, self._seal(batch)))
                            batch, target = new_batch(self.storage.rollups), self._next_count()
                            continue
                        if full or stop:  # nothing more to add to it: wait for the writer
                            total.add(self.finish(in_flight[0], in_flight[1].result()))
                            in_flight = None
                            continue
                elif stop:
                    total.more = over
                    break
                want = target - batch.entries
                block = None
                if listen and not batch.raw and in_flight is None:
                    block = 1000 * max(0.001, min(LONGEST_BLOCK_SECONDS, deadline - time.monotonic()))
                raw = self.consumer.read(want, ">", block)
                add(batch, raw, self.retention_days, self.future_days)
                if raw:
                    behind = entry_age_seconds(raw[0][0])
                    caught_up = helper and behind < CAUGHT_UP_SECONDS
                    if listen and ask_for_help is not None and behind > FALLING_BEHIND_SECONDS:
                        self._ask_for_help(ask_for_help)
                if len(raw) >= want and not caught_up:
                    continue
                if in_flight is not None:  # the stream is drained for now: let the store get on
                    wait([in_flight[1]], timeout=IDLE_SLICE_SECONDS)
                elif batch.raw and listen:  # a young batch: give it company
                    time.sleep(max(0.0, min(IDLE_SLICE_SECONDS, self.max_wait_seconds - batch.age())))
                elif not batch.raw and not listen:
                    break  # drained
        finally:
            if in_flight is not None:
                total.add(self.finish(in_flight[0], in_flight[1].result()))
        total.seconds = time.monotonic() - started
        return total
