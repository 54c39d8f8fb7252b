"""What the aggregator's stream reads cost the writers: XADD latency while a consumer drains a backlog.

Redis runs one command at a time, so a writer's XADD waits for whatever command is running. A consumer
drains a pre-filled stream of one-reading entries (as the ingestor writes them) with the aggregator's own
StreamConsumer, reading and acknowledging in its calls of `chunk` entries, while a writer in another process
times XADDs to another key, sent on a fixed schedule. Run for the aggregator's chunk and for calls of a
whole batch (10,000 entries, how it read before), both on the same Redis.

`python -m bench.redis_stalls URL STOP_FILE` is the writer: XADDs until STOP_FILE exists, then prints its
latencies (ms) as one JSON line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

WHOLE_BATCH = 10_000  # VT_BATCH_ENTRIES' default: a batch in one call
INTERVAL_SECONDS = 0.001  # the writer's schedule: 1,000 XADDs a second


def _percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


def writer(url: str, stop_file: str) -> None:
    """XADDs on a fixed schedule, each timed from when it was due (not from when it was sent): devices
    keep sending while Redis is busy, so a stall delays every request due during it, not just the one in
    flight (a client that waits for each answer before the next would count a 25 ms stall once)."""
    client = redis.Redis.from_url(url)
    took: list[float] = []
    due = time.perf_counter()
    while not os.path.exists(stop_file):
        ahead = due - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        client.xadd("bench:writer", {"r": "x"}, maxlen=1000)
        took.append((time.perf_counter() - due) * 1000)
        due += INTERVAL_SECONDS
    took.sort()
    print(json.dumps({"n": len(took), "p50": _percentile(took, 0.5), "p99": _percentile(took, 0.99),
                      "p999": _percentile(took, 0.999), "max": took[-1]}))


def _fill(client: redis.Redis, key: str, entries: int) -> None:
    reading = json.dumps([["metric_0", int(time.time() * 1000), 1.5]])
    pipe = client.pipeline(transaction=False)
    for n in range(entries):
        pipe.xadd(key, {"v": "1", "d": str(1 + n % 1000), "r": reading, "at": "0"})
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()


def drain_with_writer(url: str, entries: int, chunk: int, scratch: Path) -> dict:
    """Drain `entries` one-reading entries in batches of WHOLE_BATCH, calls of `chunk`; the writer's
    latencies (ms) meanwhile and the drain's seconds."""
    from aggregator.consumer import StreamConsumer

    client = redis.Redis.from_url(url)
    key = "bench:stalls"
    client.delete(key)
    _fill(client, key, entries)
    consumer = StreamConsumer(client, key, "bench", "bench:0", f"{key}:dead", claim_idle_ms=60_000,
                              max_deliveries=5)
    consumer.chunk = chunk
    consumer.ensure_group()
    stop = scratch / f"writer-stop-{chunk}"
    stop.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.redis_stalls", url, str(stop)],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the writer connected and running
        started = time.perf_counter()
        while batch := consumer.read(WHOLE_BATCH, ">"):
            consumer.ack(entry_id for entry_id, _ in batch)
        seconds = time.perf_counter() - started
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=30)
    client.delete(key)
    return {**json.loads(out.strip().splitlines()[-1]), "seconds": seconds}


if __name__ == "__main__":
    writer(sys.argv[1], sys.argv[2])
