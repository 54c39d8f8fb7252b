"""`make bench` (Python side): the aggregator against a raw COPY, and raw range queries over HTTP.

Prints a table. Everything runs on this machine in one go, so the yardstick (a raw binary COPY of the
same rows into the same table) shares the conditions of what it measures.

Environment: BENCH_ENTRIES (3000 entries of 100 readings), BENCH_QUERY_ROWS (10,000,000),
BENCH_QUERIES (2000).
"""
from __future__ import annotations

import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stack.nginx import Nginx  # noqa: E402
from stack.servers import Postgres, Redis, free_port  # noqa: E402
from stack.services import Process  # noqa: E402

ADMIN = "bench-admin-token-0123456789"
ENTRIES = int(os.environ.get("BENCH_ENTRIES", "3000"))
QUERY_ROWS = int(os.environ.get("BENCH_QUERY_ROWS", "10000000"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "2000"))


def log(msg: str) -> None:
    print(f"  .. {msg}", flush=True)


def count_rows(db) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry")
        return cur.fetchone()[0]


def fill_stream(client: redis.Redis, key: str, entries: int, base_ms: int) -> int:
    """`entries` entries of 100 readings (10 metrics x 10 timestamps) from 100 devices."""
    pipe = client.pipeline(transaction=False)
    for n in range(entries):
        device = 1 + n % 100
        t0 = base_ms + (n // 100) * 10_000
        readings = [[f"metric_{m}", t0 + k * 1000, round(random.uniform(-50, 50), 3)]
                    for k in range(10) for m in range(10)]
        pipe.xadd(key, {"v": "1", "d": str(device), "r": json.dumps(readings, separators=(",", ":")),
                        "at": str(base_ms)})
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()
    return entries * 100


def bench_aggregator(env: dict, run_dir: Path, db, client: redis.Redis) -> float:
    """Readings/s of one Celery worker process draining a pre-filled stream, steady state."""
    with db.cursor() as cur:
        cur.execute("TRUNCATE telemetry")
    client.delete("vt:telemetry")
    total = fill_stream(client, "vt:telemetry", ENTRIES, int(time.time() * 1000) - 6 * 3_600_000)
    log(f"stream pre-filled with {ENTRIES} entries ({total} readings)")
    agg_env = {**env, "VT_WORKER_CONCURRENCY": "1", "VT_DRAIN_INTERVAL_SECONDS": "0.2"}
    worker = Process("bench-worker", "worker", agg_env, run_dir / "logs" / "worker.log").start(run_dir)
    beat = Process("bench-beat", "beat", agg_env, run_dir / "logs" / "beat.log").start(run_dir)
    try:
        samples = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = count_rows(db)
            samples.append((time.perf_counter(), n))
            if n >= total:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the aggregator did not store everything within 10 minutes")
    finally:
        beat.stop()
        worker.stop()
    # Steady state: from the first sample past 10% to the first past 90% (start-up excluded).
    t1, n1 = next(s for s in samples if s[1] >= total * 0.1)
    t2, n2 = next(s for s in samples if s[1] >= total * 0.9)
    return (n2 - n1) / (t2 - t1)


def bench_copy(db) -> float:
    """Readings/s of a raw binary COPY of the same shape of rows into the same (emptied) table."""
    sys.path.insert(0, str(ROOT / "services" / "aggregator"))
    from aggregator.copy_encoding import COPY_HEADER, COPY_TRAILER, encode_entry
    from visiontrack.stream import Entry

    with db.cursor() as cur:
        cur.execute("TRUNCATE telemetry")
    base_ms = int(time.time() * 1000) - 6 * 3_600_000
    rows = []
    for n in range(ENTRIES):
        t0 = base_ms + (n // 100) * 10_000
        readings = [[f"metric_{m}", t0 + k * 1000, round(random.uniform(-50, 50), 3)]
                    for k in range(10) for m in range(10)]
        rows.append(encode_entry(Entry(str(n), 1 + n % 100, readings, base_ms), -10**9, 10**9).rows)
    payload = COPY_HEADER + b"".join(rows) + COPY_TRAILER
    db.autocommit = False
    started = time.perf_counter()
    with db.cursor() as cur:
        cur.copy_expert("COPY telemetry (device_id, metric, ts, value) FROM STDIN WITH (FORMAT binary)",
                        io.BytesIO(payload))
    db.commit()
    elapsed = time.perf_counter() - started
    db.autocommit = True
    return ENTRIES * 100 / elapsed


def load_query_table(db, rows: int) -> tuple[int, int]:
    """1,000 devices x 2 metrics over 7 days, `rows` readings in all, generated inside Postgres."""
    with db.cursor() as cur:
        cur.execute("TRUNCATE telemetry")
        per_series = rows // 2000
        step_ms = 7 * 86_400_000 // per_series
        end_ms = int(time.time() * 1000) // 60_000 * 60_000
        start_ms = end_ms - per_series * step_ms
        cur.execute("SELECT vt_ensure_telemetry_partition(d::date) FROM generate_series("
                    "to_timestamp(%s / 1000.0)::date, to_timestamp(%s / 1000.0)::date, interval '1 day') d",
                    (start_ms, end_ms))
        cur.execute("""INSERT INTO telemetry (device_id, metric, ts, value)
                       SELECT d, m, to_timestamp((%s + i::bigint * %s) / 1000.0), random() * 100
                       FROM generate_series(1, 1000) d, unnest(ARRAY['temperature', 'humidity']) m,
                            generate_series(0, %s - 1) i""", (start_ms, step_ms, per_series))
        cur.execute("ANALYZE telemetry")
    return start_ms, end_ms


def bench_range_queries(url: str, start_ms: int, end_ms: int) -> list[float]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ADMIN}"
    latencies = []
    for i in range(QUERIES + 100):
        device = random.randint(1, 1000)
        metric = random.choice(["temperature", "humidity"])
        frm = random.randint(start_ms, end_ms - 3_600_000)
        t = time.perf_counter()
        resp = session.get(f"{url}/api/telemetry/", params={"device_id": device, "metric": metric,
                                                             "from": frm, "to": frm + 3_600_000})
        elapsed = time.perf_counter() - t
        if resp.status_code != 200:
            raise RuntimeError(f"range query failed: {resp.status_code} {resp.text[:200]}")
        if i >= 100:  # the first hundred warm caches and connections
            latencies.append(elapsed * 1000)
    return latencies


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000)[int(p * 10) - 1]


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="vt-bench-"))
    os.chmod(run_dir, 0o755)
    pg = Postgres(run_dir / "pg", free_port(), run_dir / "logs" / "postgres.log")
    rs = Redis(run_dir / "redis", free_port(), run_dir / "logs" / "redis.log")
    print("VisionTrack benchmark (Python side): Postgres, Redis, aggregator, query service")
    pg.start()
    rs.start()
    env = {"DATABASE_URL": pg.url, "REDIS_URL": rs.url, "VT_ADMIN_TOKENS": ADMIN, "VT_METRICS_PORT": "0",
           "VT_BEAT_SCHEDULE_FILE": str(run_dir / "beat-schedule"), "VT_LOG_LEVEL": "warning"}
    Process("migrate", "migrate", env, run_dir / "logs" / "migrate.log").run_to_end(run_dir)
    db = psycopg2.connect(pg.url)
    db.autocommit = True
    client = redis.Redis.from_url(rs.url)
    results = []
    try:
        log("raw COPY yardstick")
        copy_rate = bench_copy(db)
        log(f"raw COPY: {copy_rate:,.0f} readings/s")
        log("aggregator: one worker process draining a pre-filled stream")
        agg_rate = bench_aggregator(env, run_dir, db, client)
        log(f"aggregator: {agg_rate:,.0f} readings/s")
        results += [
            ("raw binary COPY into telemetry (yardstick)", f"{copy_rate:,.0f} readings/s", ""),
            ("aggregator, 1 worker process, entries of 100", f"{agg_rate:,.0f} readings/s",
             f"{agg_rate / copy_rate:.0%} of COPY (target >= 80,000/s and >= 65%)"),
        ]
        log(f"loading {QUERY_ROWS:,} rows for the range queries")
        t = time.perf_counter()
        start_ms, end_ms = load_query_table(db, QUERY_ROWS)
        log(f"loaded in {time.perf_counter() - t:.0f}s")
        port = free_port()
        query = Process("query", "query", {**env, "VT_HTTP_BIND": f"127.0.0.1:{port}"},
                        run_dir / "logs" / "query.log").start(run_dir)
        query.wait_http(port)
        nginx = Nginx(free_port(), {"query": port}, run_dir / "nginx", run_dir / "logs")
        nginx.start()
        try:
            lat = bench_range_queries(nginx.url, start_ms, end_ms)
        finally:
            nginx.stop()
            query.stop()
        results.append((f"1-hour raw range, 1 device+metric, {QUERY_ROWS / 1e6:.0f}M rows, via nginx",
                        f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms",
                        f"{len(lat)} sequential requests (target p99 < 10 ms)"))
    finally:
        db.close()
        rs.stop()
        pg.stop()
    width = max(len(r[0]) for r in results)
    print()
    print(f"{'measure'.ljust(width)} | {'result':32} | note")
    print(f"{'-' * width}-|-{'-' * 32}-|-----")
    for name, value, note in results:
        print(f"{name.ljust(width)} | {value:32} | {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
