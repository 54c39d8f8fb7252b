"""`make bench` (Python side): the aggregator against a raw COPY, with and without rollups and alerts, and
raw, aggregate and latest queries over HTTP.

Prints a table. Everything runs on this machine in one go, so the yardstick (a raw binary COPY of the
same rows into the same table) shares the conditions of what it measures, and the aggregator runs
without and with rollups+alerts alternately (BENCH_ROUNDS times each, in ABBA order, medians compared) so
both see the same machine: with one worker process, then with two as deployed, then as deployed on
entries of one reading each (as most devices send them). The query latencies come with two floors
measured in the same run: a bare WSGI app behind the same gunicorn and nginx, and the machine's own CPU
jitter (bench/machine.py).

BENCH_ONLY=device_stats runs only the comparison of the aggregator with and without its per-device stored
counts (GET /api/devices/{id}/stats). Environment: BENCH_ENTRIES (20,000 entries of 100 readings: fewer make the rates swing by 20%),
BENCH_SINGLE_ENTRIES (300,000 entries of 1 reading), BENCH_QUERY_ROWS (10,000,000), BENCH_QUERY_SECONDS
(20 per query kind), BENCH_ROUNDS (4), BENCH_STALL_ENTRIES (200,000 entries drained while a writer times its
XADDs, bench/redis_stalls.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_noise  # noqa: E402
from bench.redis_stalls import WHOLE_BATCH, drain_with_writer  # noqa: E402
from bench.report import print_table  # noqa: E402
from stack.nginx import Nginx  # noqa: E402
from stack.servers import Postgres, Redis, free_port, scratch_dir, terminate, wait_for_port  # noqa: E402
from stack.services import Process, bin_dir  # noqa: E402

ADMIN = "bench-admin-token-0123456789"
ENTRIES = int(os.environ.get("BENCH_ENTRIES", "20000"))
SINGLE_ENTRIES = int(os.environ.get("BENCH_SINGLE_ENTRIES", "300000"))
QUERY_ROWS = int(os.environ.get("BENCH_QUERY_ROWS", "10000000"))
QUERY_SECONDS = int(os.environ.get("BENCH_QUERY_SECONDS", "20"))
QUERY_SCRIPT = ROOT / "bench" / "query" / "requests.lua"
QUERY_KINDS = (  # wrk script kind, what the table calls it, p99 target (ms)
    ("raw", "1-hour raw range, 1 device+metric", 10),
    ("day_1m", "aggregate 24 h at 1m (ragged edges)", 25),
    ("month_1h", "aggregate 30 days at 1h", 10),
    ("latest", "latest, all metrics of a device", 5),
)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
STALL_ENTRIES = int(os.environ.get("BENCH_STALL_ENTRIES", "200000"))
DERIVED = ("telemetry_1m", "telemetry_1h", "telemetry_latest", "alert_state", "alert_events", "device_stats")
# "device_stats": only the comparison of the aggregator with and without its per-device stored counts.
ONLY = os.environ.get("BENCH_ONLY", "")


def log(msg: str) -> None:
    print(f"  .. {msg}", flush=True)


def count_rows(db) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry")
        return cur.fetchone()[0]


def stored_readings(client: redis.Redis, per_entry: int) -> int:
    """Readings of the bench's entries (`per_entry` each) acknowledged, i.e. committed, by the aggregator."""
    try:
        groups = client.xinfo_groups("vt:telemetry")
    except redis.ResponseError:
        return 0
    for g in groups:
        if g["name"] in (b"aggregators", "aggregators"):
            return (int(g.get("entries-read") or 0) - int(g["pending"])) * per_entry
    return 0


def bench_entry(n: int, base_ms: int) -> tuple[int, list]:
    """The n-th benchmark entry: (device id, 100 readings: 10 metrics x 10 timestamps); 100 devices."""
    t0 = base_ms + (n // 100) * 10_000
    return 1 + n % 100, [[f"metric_{m}", t0 + k * 1000, round(random.uniform(-50, 50), 3)]
                         for k in range(10) for m in range(10)]


def single_entry(n: int, base_ms: int) -> tuple[int, list]:
    """The n-th single-reading entry: each of 1,000 devices sends metric_0 once a second."""
    return 1 + n % 1000, [["metric_0", base_ms + n, round(random.uniform(-50, 50), 3)]]


@dataclass(frozen=True)
class Shape:
    """What the pre-filled stream holds: `entries` entries of `per_entry` readings from `devices` devices,
    `entry(n, base_ms)` the n-th, its times advancing `ms_per_entry` per entry on average."""
    name: str
    entries: int
    per_entry: int
    devices: int
    ms_per_entry: int
    entry: Callable[[int, int], tuple[int, list]]

    @property
    def readings(self) -> int:
        return self.entries * self.per_entry


BATCHED = Shape("entries of 100 readings", ENTRIES, 100, 100, 100, bench_entry)
# As the ingestor's (a) sends them: one reading per request, the commonest way devices report.
SINGLE = Shape("entries of 1 reading", SINGLE_ENTRIES, 1, 1000, 1, single_entry)


def fill_stream(client: redis.Redis, key: str, shape: Shape, base_ms: int) -> int:
    pipe = client.pipeline(transaction=False)
    for n in range(shape.entries):
        device, readings = shape.entry(n, base_ms)
        pipe.xadd(key, {"v": "1", "d": str(device), "r": json.dumps(readings, separators=(",", ":")),
                        "at": str(base_ms)})
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()
    return shape.readings


def cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system, with reaped children's) of the processes under `roots`, from /proc."""
    procs: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        total += procs[pid][1]
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def postmaster_pid(pg: Postgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def bench_aggregator(env: dict, run_dir: Path, db, client: redis.Redis, rollups: bool = True,
                     pg: Postgres | None = None, processes: int = 1, shape: Shape = BATCHED,
                     device_stats: bool = True) -> tuple[float, float]:
    """Readings/s of a Celery worker with `processes` processes draining a pre-filled stream, steady state.

    With `rollups`, the worker keeps the rollups, latest values and last_seen_at, and beat evaluates alert
    rules (a threshold rule over every device and an inactivity rule) every VT_ALERT_EVAL_SECONDS, in the
    same worker: with one process an evaluation waits for the drain task and the drain for it; with two (the
    deployed default) they run side by side. Without, only raw rows are written and no rule exists.

    Returns readings/s and CPU seconds per million readings (worker, beat and Postgres together), the
    second much less sensitive to what else the machine runs.
    """
    with db.cursor() as cur:
        cur.execute(f"TRUNCATE telemetry, {', '.join(DERIVED)}")
        cur.execute("DELETE FROM alert_rules")
        cur.execute("INSERT INTO devices (id, name, type) SELECT i, 'bench-' || i, 'bench' "
                    "FROM generate_series(1, %s) i ON CONFLICT DO NOTHING", (shape.devices,))
        cur.execute("UPDATE devices SET last_seen_at = NULL")
        if rollups:
            cur.execute("""INSERT INTO alert_rules (name, kind, metric, op, threshold, for_seconds, created_at,
                                                   updated_at)
                           VALUES ('bench hot', 'threshold', 'metric_0', '>', 45, 2, now() - interval '1 hour',
                                   now() - interval '1 hour')""")
            cur.execute("""INSERT INTO alert_rules (name, kind, after_seconds, device_type)
                           VALUES ('bench quiet', 'inactivity', 60, 'bench')""")
    client.delete("vt:telemetry")
    # Recent readings (the last minutes), which the alert rules (made "an hour ago") evaluate, every one.
    start_ms = int(time.time() * 1000) - shape.entries * shape.ms_per_entry - 60_000
    total = fill_stream(client, "vt:telemetry", shape, start_ms)
    log(f"stream pre-filled with {shape.entries} {shape.name} ({total} readings)")
    agg_env = {**env, "VT_WORKER_CONCURRENCY": str(processes), "VT_DRAIN_INTERVAL_SECONDS": "0.2",
               "VT_ROLLUPS_ENABLED": "true" if rollups else "false",
               "VT_DEVICE_STATS_ENABLED": "true" if device_stats else "false"}
    pg_cpu = cpu_seconds([postmaster_pid(pg)]) if pg else 0.0
    worker = Process("bench-worker", "worker", agg_env, run_dir / "logs" / "worker.log").start(run_dir)
    beat = Process("bench-beat", "beat", agg_env, run_dir / "logs" / "beat.log").start(run_dir)
    cpu = 0.0
    try:
        samples = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            # From Redis: a count(*) every 0.1 s would load Postgres itself.
            n = stored_readings(client, shape.per_entry)
            samples.append((time.perf_counter(), n))
            if n >= total:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the aggregator did not store everything within 10 minutes")
        cpu = cpu_seconds([worker.pid, beat.pid]) + (cpu_seconds([postmaster_pid(pg)]) - pg_cpu if pg else 0.0)
    finally:
        beat.stop()
        worker.stop()
    if count_rows(db) != total:
        raise RuntimeError(f"{count_rows(db)} readings stored, {total} expected")
    if rollups:  # the derived data really was written
        with db.cursor() as cur:
            cur.execute("SELECT sum(count) FROM telemetry_1m")
            if cur.fetchone()[0] != total:
                raise RuntimeError("the 1-minute rollups do not add up to the readings stored")
    if device_stats:
        with db.cursor() as cur:
            cur.execute("SELECT coalesce(sum(stored), 0) FROM device_stats")
            if cur.fetchone()[0] != total:
                raise RuntimeError("the per-device stored counts do not add up to the readings stored")
    # Steady state: from the first sample past 10% to the first past 90% (start-up excluded).
    t1, n1 = next(s for s in samples if s[1] >= total * 0.1)
    t2, n2 = next(s for s in samples if s[1] >= total * 0.9)
    if t2 <= t1:
        raise RuntimeError(f"{total} readings were stored between two samples: raise BENCH_ENTRIES to measure")
    return (n2 - n1) / (t2 - t1), cpu / total * 1e6


@dataclass
class Rounds:
    """The aggregator's rounds of one kind: readings/s and CPU seconds per million readings."""
    rates: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


@dataclass
class RollupCost:
    """Alternating aggregator rounds without (raw) and with (full) rollups+alerts."""
    raw: Rounds = field(default_factory=Rounds)
    full: Rounds = field(default_factory=Rounds)

    def summary(self) -> str:
        """The cost from the medians, and taken pair by pair (each round with rollups against the raw one
        next to it, which saw the same machine), with the pairs' range."""
        pairs = sorted(1 - f / r for f, r in zip(self.full.rates, self.raw.rates))
        full, raw = (", ".join(f"{r:,.0f}" for r in rounds.rates) for rounds in (self.full, self.raw))
        return (f"rollups+alerts cost {1 - self.full.rate / self.raw.rate:.0%} (pair by pair "
                f"{statistics.median(pairs):.0%}, pairs {pairs[0]:.0%} to {pairs[-1]:.0%}), medians of {full} vs {raw}")


def compare_rollups(env: dict, run_dir: Path, db, client: redis.Redis, pg: Postgres, processes: int,
                    shape: Shape = BATCHED) -> RollupCost:
    """BENCH_ROUNDS rounds of the aggregator without and with rollups+alerts, so both see the same machine.

    The order alternates (raw first, then full first, ...): whatever drifts through the run (the machine's
    load, Postgres' checkpoints and autovacuum) then weighs on both kinds alike instead of always on the
    second round of a pair."""
    cost = RollupCost()
    for round_ in range(ROUNDS):
        for rollups in ((False, True) if round_ % 2 == 0 else (True, False)):
            what = "with rollups+alerts" if rollups else "raw only"
            log(f"aggregator round {round_ + 1}/{ROUNDS}, {processes} worker process(es), {shape.name}, "
                f"{what}: draining a pre-filled stream")
            rate, cpu = bench_aggregator(env, run_dir, db, client, rollups, pg, processes, shape)
            rounds = cost.full if rollups else cost.raw
            rounds.rates.append(rate)
            rounds.cpus.append(cpu)
            log(f"aggregator, {what}: {rate:,.0f} readings/s, {cpu:.2f} CPU s per million readings")
    return cost


def compare_device_stats(env: dict, run_dir: Path, db, client: redis.Redis, pg: Postgres, processes: int,
                         shape: Shape = BATCHED) -> RollupCost:
    """BENCH_ROUNDS rounds of the aggregator as deployed (rollups+alerts) without (`raw`) and with (`full`)
    the per-device stored counts, in ABBA order like compare_rollups."""
    cost = RollupCost()
    for round_ in range(ROUNDS):
        for stats in ((False, True) if round_ % 2 == 0 else (True, False)):
            what = "with device stats" if stats else "without device stats"
            log(f"aggregator round {round_ + 1}/{ROUNDS}, {processes} worker process(es), {shape.name}, {what}")
            rate, cpu = bench_aggregator(env, run_dir, db, client, True, pg, processes, shape, device_stats=stats)
            rounds = cost.full if stats else cost.raw
            rounds.rates.append(rate)
            rounds.cpus.append(cpu)
            log(f"aggregator, {what}: {rate:,.0f} readings/s, {cpu:.2f} CPU s per million readings")
    return cost


TX_BATCHES = int(os.environ.get("BENCH_TX_BATCHES", "40"))


def transaction_cost(db_url: str, db) -> tuple[float, float]:
    """Median ms of one batch's transaction (10,000 one-reading entries of 1,000 devices, rollups on) with
    and without the device stats upsert, BENCH_TX_BATCHES batches each, alternating batch by batch on two
    connections, so whatever else the machine runs weighs on both alike. The rollup rows are made before
    the clock starts, as the pipeline makes them off the writer thread."""
    from aggregator.copy_encoding import encode_entry
    from aggregator.storage import TelemetryStorage, rollup_payload
    from visiontrack.stream import Entry

    with db.cursor() as cur:
        cur.execute(f"TRUNCATE telemetry, {', '.join(DERIVED)}")
        cur.execute("INSERT INTO devices (id, name, type) SELECT i, 'bench-' || i, 'bench' "
                    "FROM generate_series(1, 1000) i ON CONFLICT DO NOTHING")
    base_ms = int(time.time() * 1000) - 3_600_000
    stores = {stats: TelemetryStorage(psycopg2.connect(db_url), True, stats) for stats in (True, False)}
    took: dict[bool, list[float]] = {True: [], False: []}
    n = 0
    try:
        for i in range(2 * TX_BATCHES):
            stats = i % 4 in (0, 3)  # ABBA
            batch = []
            for _ in range(10_000):
                device, readings = single_entry(n, base_ms)
                batch.append(encode_entry(Entry(str(n), device, readings, base_ms), -10**9, 10**9))
                n += 1
            rows = rollup_payload(batch)
            started = time.perf_counter()
            stores[stats].store(batch, rows)
            took[stats].append((time.perf_counter() - started) * 1000)
    finally:
        for store in stores.values():
            store.conn.close()
    return statistics.median(took[True]), statistics.median(took[False])


def device_stats_rows(env: dict, run_dir: Path, db, client: redis.Redis, pg: Postgres) -> list[tuple]:
    """The table rows: what the per-device stored counts cost the aggregator as deployed (target <= 5%)."""
    log(f"one batch's transaction with and without device stats, {TX_BATCHES} batches each")
    on, off = transaction_cost(pg.url, db)
    rows = [("one batch's transaction, 10,000 one-reading entries of 1,000 devices",
             f"{on:.1f} ms vs {off:.1f} ms", f"with device stats vs without: {on / off - 1:+.1%} (medians of "
             f"{TX_BATCHES} batches each, alternating)")]
    for shape in (BATCHED, SINGLE):
        cost = compare_device_stats(env, run_dir, db, client, pg, processes=2, shape=shape)
        pairs = sorted(1 - f / r for f, r in zip(cost.full.rates, cost.raw.rates))
        rows.append((f"as deployed, {shape.name}, device stats on vs off",
                     f"{cost.full.rate:,.0f} vs {cost.raw.rate:,.0f} readings/s",
                     f"device stats cost {1 - cost.full.rate / cost.raw.rate:.1%} (pair by pair "
                     f"{statistics.median(pairs):.1%}, pairs {pairs[0]:.1%} to {pairs[-1]:.1%}); CPU per 1M "
                     f"readings {cost.full.cpu:.1f} s vs {cost.raw.cpu:.1f} s (target <= 5%)"))
    return rows


def bench_copy(db, shape: Shape = BATCHED) -> float:
    """Readings/s of a raw binary COPY of the rows of `shape`'s entries into the same (emptied) table."""
    from aggregator.copy_encoding import COPY_HEADER, COPY_TRAILER, encode_entry
    from aggregator.storage import COPY_TELEMETRY, copy_in
    from visiontrack.stream import Entry

    with db.cursor() as cur:
        cur.execute("TRUNCATE telemetry")
    base_ms = int(time.time() * 1000) - 6 * 3_600_000
    rows = []
    for n in range(shape.entries):
        device, readings = shape.entry(n, base_ms)
        rows.append(encode_entry(Entry(str(n), device, readings, base_ms), -10**9, 10**9).rows)
    payload = COPY_HEADER + b"".join(rows) + COPY_TRAILER
    db.autocommit = False
    started = time.perf_counter()
    with db.cursor() as cur:
        copy_in(cur, COPY_TELEMETRY, payload)
    db.commit()
    elapsed = time.perf_counter() - started
    db.autocommit = True
    return shape.readings / elapsed


def load_query_table(db, rows: int) -> tuple[int, int]:
    """1,000 devices x 2 metrics over 7 days, `rows` readings in all, generated inside Postgres, and the
    rollups and latest values the aggregator would have made of them."""
    with db.cursor() as cur:
        cur.execute(f"TRUNCATE telemetry, {', '.join(DERIVED)}")
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
        epoch = "timestamptz '2000-01-01 00:00+00'"
        cur.execute(f"""INSERT INTO telemetry_1m
                        SELECT device_id, metric, date_bin('1 minute', ts, {epoch}), count(*), sum(value),
                               min(value), max(value)
                        FROM telemetry GROUP BY 1, 2, 3""")
        cur.execute(f"""INSERT INTO telemetry_1h
                        SELECT device_id, metric, date_bin('1 hour', bucket, {epoch}), sum(count), sum(sum),
                               min(min), max(max)
                        FROM telemetry_1m GROUP BY 1, 2, 3""")
        cur.execute("""INSERT INTO telemetry_latest
                       SELECT d, m, t.ts, t.value
                       FROM generate_series(1, 1000) d, unnest(ARRAY['temperature', 'humidity']) m,
                            LATERAL (SELECT ts, value FROM telemetry WHERE device_id = d AND metric = m
                                     ORDER BY ts DESC LIMIT 1) t""")
        for table in ("telemetry", "telemetry_1m", "telemetry_1h", "telemetry_latest"):
            cur.execute(f"VACUUM (ANALYZE) {table}")  # what autovacuum does to settled data
        cur.execute("CHECKPOINT")  # the load's dirty pages written now, not during the measurements
    return start_ms, end_ms


def query_latency(url: str, kind: str, start_ms: int, end_ms: int) -> dict:
    """Sequential requests of one kind from wrk (one connection, so each waits for the one before) for
    QUERY_SECONDS, after a short warm-up of caches and connections; percentiles in ms."""
    env = {**os.environ, "QUERY_KIND": kind, "QUERY_START_MS": str(start_ms), "QUERY_END_MS": str(end_ms),
           "QUERY_TOKEN": ADMIN}
    for seconds in (2, QUERY_SECONDS):
        out = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds}s", "-s", str(QUERY_SCRIPT), url],
                             env=env, capture_output=True, text=True, check=True).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    if stats["errors"]:
        raise RuntimeError(f"{kind}: {stats['errors']} failed requests out of {stats['requests']}")
    return {"requests": stats["requests"], **{k[:-3]: stats[k] / 1000 for k in ("p50_us", "p90_us", "p99_us")}}


@contextlib.contextmanager
def behind_nginx(port: int, run_dir: Path, name: str) -> Iterator[str]:
    """nginx routing the query paths to `port`, as the stack does; yields its URL."""
    nginx = Nginx(free_port(), {"query": port}, run_dir / name, run_dir / "logs")
    nginx.start()
    try:
        yield nginx.url
    finally:
        nginx.stop()


def measure_queries(env: dict, run_dir: Path, start_ms: int, end_ms: int) -> dict[str, dict]:
    """Each query kind's latency, from the query service behind nginx."""
    port = free_port()
    query = Process("query", "query", {**env, "VT_HTTP_BIND": f"127.0.0.1:{port}"},
                    run_dir / "logs" / "query.log").start(run_dir)
    try:
        query.wait_http(port)
        with behind_nginx(port, run_dir, "nginx") as url:
            return {kind: query_latency(url, kind, start_ms, end_ms) for kind, _, _ in QUERY_KINDS}
    finally:
        query.stop()


def measure_floor(env: dict, run_dir: Path, start_ms: int, end_ms: int) -> dict:
    """The latency of bench/query/floor_app.py served like the query service and asked the same way."""
    port = free_port()
    log_path = run_dir / "logs" / "floor.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [str(bin_dir() / "gunicorn"), "--config", "python:visiontrack.web.gunicorn_conf", "--chdir", str(ROOT),
             "bench.query.floor_app:app"],
            env={**os.environ, **env, "VT_HTTP_BIND": f"127.0.0.1:{port}"}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_for_port(port, 30, "floor app", proc, log_path)
        with behind_nginx(port, run_dir, "nginx-floor") as url:
            return query_latency(url, "latest", start_ms, end_ms)
    finally:
        terminate(proc, 20)


def redis_stalls(url: str, run_dir: Path) -> tuple[str, str, str]:
    """The table row: writers' XADD latency while the aggregator's consumer drains one-reading entries, in
    its calls and in calls of a whole batch, in ABBA order; the medians of each."""
    from aggregator.consumer import StreamConsumer

    chunk_size = StreamConsumer.chunk
    got: dict[int, list[dict]] = {chunk_size: [], WHOLE_BATCH: []}
    for chunk in (chunk_size, WHOLE_BATCH, WHOLE_BATCH, chunk_size):
        log(f"draining {STALL_ENTRIES:,} one-reading entries in calls of {chunk:,} while a writer times XADDs")
        got[chunk].append(drain_with_writer(url, STALL_ENTRIES, chunk, run_dir))

    def med(chunk: int, what: str) -> float:
        return statistics.median(r[what] for r in got[chunk])

    return (f"writers' XADD while the aggregator drains {STALL_ENTRIES:,} one-reading entries (calls of "
            f"{chunk_size:,})",
            f"p99 {med(chunk_size, 'p99'):.2f} ms, p99.9 {med(chunk_size, 'p999'):.2f} ms",
            f"in calls of a whole batch ({WHOLE_BATCH:,}): p99 {med(WHOLE_BATCH, 'p99'):.2f} ms, p99.9 "
            f"{med(WHOLE_BATCH, 'p999'):.2f} ms; drained in {med(chunk_size, 'seconds'):.2f} s vs "
            f"{med(WHOLE_BATCH, 'seconds'):.2f} s")


def _rows(n: int) -> str:
    return f"{n / 1e6:.0f}M" if n >= 1_000_000 else f"{n:,}"


def main() -> int:
    run_dir = scratch_dir("vt-bench-")
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
        if ONLY == "device_stats":
            results += device_stats_rows(env, run_dir, db, client, pg)
            print_table(results)
            return 0
        log("raw COPY yardstick")
        copy_rate = bench_copy(db)
        log(f"raw COPY: {copy_rate:,.0f} readings/s")
        one_process = compare_rollups(env, run_dir, db, client, pg, processes=1)
        deployed = compare_rollups(env, run_dir, db, client, pg, processes=2)
        one_reading = compare_rollups(env, run_dir, db, client, pg, processes=2, shape=SINGLE)
        results += [
            ("raw binary COPY into telemetry (yardstick)", f"{copy_rate:,.0f} readings/s", ""),
            ("aggregator, 1 worker process, raw rows only", f"{one_process.raw.rate:,.0f} readings/s",
             f"{one_process.raw.rate / copy_rate:.0%} of COPY (target >= 80,000/s and >= 65%)"),
            ("aggregator, 1 worker process, rollups+alerts", f"{one_process.full.rate:,.0f} readings/s",
             f"{one_process.full.rate / copy_rate:.0%} of COPY; {one_process.summary()}; alert evaluations and the drain "
             "take turns in the one process"),
            ("aggregator as deployed (2 worker processes), raw only", f"{deployed.raw.rate:,.0f} readings/s", ""),
            ("aggregator as deployed (2 worker processes), rollups+alerts", f"{deployed.full.rate:,.0f} readings/s",
             f"{deployed.summary()} (target <= 20%)"),
            ("as deployed, entries of 1 reading (1,000 devices), raw only", f"{one_reading.raw.rate:,.0f} readings/s",
             "as the ingestor's (a) sends them"),
            ("as deployed, entries of 1 reading (1,000 devices), rollups+alerts",
             f"{one_reading.full.rate:,.0f} readings/s", one_reading.summary()),
            ("aggregator CPU (worker+beat+Postgres) per 1M readings",
             f"{one_process.full.cpu:.1f} s vs {one_process.raw.cpu:.1f} s raw only",
             f"1 process; rollups+alerts cost {one_process.full.cpu / one_process.raw.cpu - 1:.0%} more CPU; "
             f"2 processes: {deployed.full.cpu:.1f} s vs {deployed.raw.cpu:.1f} s"),
        ]
        results += device_stats_rows(env, run_dir, db, client, pg)
        results.append(redis_stalls(rs.url, run_dir))
        log(f"loading {QUERY_ROWS:,} rows for the range queries")
        t = time.perf_counter()
        start_ms, end_ms = load_query_table(db, QUERY_ROWS)
        log(f"loaded in {time.perf_counter() - t:.0f}s")
        latencies = measure_queries(env, run_dir, start_ms, end_ms)
        floor = measure_floor(env, run_dir, start_ms, end_ms)
        noise = cpu_noise()
        for kind, what, target in QUERY_KINDS:
            got = latencies[kind]
            results.append((f"{what}, {_rows(QUERY_ROWS)} rows, via nginx",
                            f"p50 {got['p50']:.2f} ms, p99 {got['p99']:.2f} ms",
                            f"{got['requests']:,} sequential requests from wrk (target p99 < {target} ms)"))
        results += [
            ("floor: fixed JSON from a bare WSGI app, same gunicorn settings, via nginx",
             f"p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms",
             f"{floor['requests']:,} sequential requests, the same wrk script (yardstick)"),
            ("machine: the same 0.5 ms of CPU work, timed by the thread's CPU clock",
             f"p50 {noise['p50']:.2f} ms, p99 {noise['p99']:.2f} ms",
             f"{noise['slow_share']:.1%} of {noise['units']:,} units took 3x the median or more (yardstick)"),
        ]
    finally:
        db.close()
        rs.stop()
        pg.stop()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
