"""The stream at its high-water mark: the aggregator stalls (its worker SIGSTOPped) under a load faster than
the drills' others, the backlog reaches VT_STREAM_HIGH_WATER, and ingest answers 503 with Retry-After
instead of growing Redis: the stream's length and memory stop at the bound (give or take what arrives
between two of the writers' backlog samples). Once the worker runs again, every reading accepted is stored
exactly once."""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from tests.drills import drill_stack
from tests.drills.checks import ONLY_RETRY_LATER, assert_exactly_once, rollup_mismatches, wait_whole
from tests.drills.table import Row
from tests.load import RETRY_LATER, LoadGenerator

RATE, BATCH = 500.0, 2  # 250 requests/s: the mark is reached ~10 s into the stall
AT_THE_MARK = 5.0  # seconds of load the full stream refuses
# Entries that may pass the mark: the writers sample the backlog every VT_BACKLOG_CHECK_MS (250 ms); a second of
# load is four samples' worth.
SLACK = int(RATE / BATCH)


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock
    backlog: int
    length: int
    stream_bytes: int


def _sample(client) -> Sample:
    return Sample(time.time(), drill_stack.backlog(client), client.xlen(drill_stack.STREAM_KEY),
                  drill_stack.stream_memory(client))


def test_the_stream_at_its_high_water_mark_refuses_and_stays_bounded(stack, probe, redis_client, table):
    worker = stack.recorded_pid("worker")
    load = LoadGenerator(stack.url, stack.admin_token, devices=4, rate=RATE, batch=BATCH)
    samples: list[Sample] = []
    os.killpg(worker, signal.SIGSTOP)
    try:
        load.start()
        deadline = time.monotonic() + 60
        while not any(o.kind == RETRY_LATER for o in list(load.outcomes)):
            assert time.monotonic() < deadline, "the stream never reached its high-water mark"
            samples.append(_sample(redis_client))
            time.sleep(0.2)
        full_at = min(o.at for o in list(load.outcomes) if o.kind == RETRY_LATER)
        until = time.monotonic() + AT_THE_MARK
        while time.monotonic() < until:
            samples.append(_sample(redis_client))
            time.sleep(0.2)
    finally:
        os.killpg(worker, signal.SIGCONT)
    try:
        recovered = wait_whole(stack, probe, load, time.time(), time.monotonic())
        time.sleep(1)
    finally:
        load.stop()
    summary = load.verify(stack.reader_token, timeout=120)
    table.add(Row.of(f"stream at its high-water mark ({drill_stack.HIGH_WATER})", summary, recovered))
    assert_exactly_once(summary, ONLY_RETRY_LATER)
    assert summary.refused.get(RETRY_LATER, 0) >= AT_THE_MARK * RATE / 2, summary.report()

    bound = drill_stack.HIGH_WATER + SLACK
    assert max(s.backlog for s in samples) <= bound, [s.backlog for s in samples]
    at_mark = [s for s in samples if s.at >= full_at]
    assert len(at_mark) >= 10, "too few samples at the mark"
    first = at_mark[0]
    assert max(s.length for s in at_mark) - first.length <= SLACK, [s.length for s in at_mark]
    # The stream's memory grows no further than those few entries take (Redis packs ~100 per 4 KB node).
    assert max(s.stream_bytes for s in at_mark) <= first.stream_bytes * (1 + SLACK / drill_stack.HIGH_WATER) + 8192, \
        [s.stream_bytes for s in at_mark]
    with drill_stack.database(stack) as conn:
        assert rollup_mismatches(conn, [d.id for d in load.devices]) == []
