"""`make bench` (whole pipeline): HTTP into the Rust ingestor → Redis stream → aggregator → rows in Postgres.

A fixed-rate load (bench/ingestor/loadgen, keep-alive) sends requests of 100 readings for BENCH_E2E_SECONDS
(60); every reading is distinct, so every one must become a row. Reported: the rate accepted over HTTP, the
rate that reached Postgres, the stream backlog over time (flat means the aggregator keeps up), and the ratio
to a raw binary COPY of the same number of rows measured in the same run.

Environment: BENCH_E2E_RATE (requests/s, 700 = 70,000 readings/s), BENCH_E2E_SECONDS (60),
BENCH_E2E_WORKERS (aggregator processes, 2).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pipeline import bench_copy  # noqa: E402
from bench.report import print_table  # noqa: E402
from stack.servers import Postgres, Redis, free_port, scratch_dir  # noqa: E402
from stack.services import INGESTOR_BINARY, Process  # noqa: E402
from visiontrack.stream import backlog  # noqa: E402
from visiontrack.tokens import index_value, token_sha256  # noqa: E402

RATE = int(os.environ.get("BENCH_E2E_RATE", "700"))
SECONDS = int(os.environ.get("BENCH_E2E_SECONDS", "60"))
WORKERS = os.environ.get("BENCH_E2E_WORKERS", "2")
LOADGEN_DIR = ROOT / "bench" / "ingestor" / "loadgen"
TOKEN = "vtd_bench-end-to-end-token"


def log(msg: str) -> None:
    print(f"  .. {msg}", flush=True)


def loadgen() -> Path:
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=LOADGEN_DIR, check=True)
    return LOADGEN_DIR / "target" / "release" / "vt-loadgen"


def body_template(base_ms: int) -> str:
    """100 readings at a time unique to the request: the loadgen's six-digit {seq} ends the epoch ms."""
    values = ",".join(f'"m{k}":{k}.5' for k in range(100))
    return '{"ts":' + str(base_ms // 1_000_000) + '{seq},"values":{' + values + "}}"


def main() -> int:
    if not INGESTOR_BINARY.exists():
        print(f"ingestor not built ({INGESTOR_BINARY}); run `make ingestor-build`", file=sys.stderr)
        return 1
    gen = loadgen()
    run_dir = scratch_dir("vt-bench-e2e-")
    pg = Postgres(run_dir / "pg", free_port(), run_dir / "logs" / "postgres.log")
    rs = Redis(run_dir / "redis", free_port(), run_dir / "logs" / "redis.log")
    print(f"VisionTrack benchmark (whole pipeline): {RATE} requests/s of 100 readings for {SECONDS}s")
    pg.start()
    rs.start()
    env = {"DATABASE_URL": pg.url, "REDIS_URL": rs.url, "VT_METRICS_PORT": "0", "VT_LOG_LEVEL": "warning",
           "VT_BEAT_SCHEDULE_FILE": str(run_dir / "beat-schedule"), "VT_WORKER_CONCURRENCY": WORKERS,
           "VT_DRAIN_INTERVAL_SECONDS": "0.5"}
    Process("migrate", "migrate", env, run_dir / "logs" / "migrate.log").run_to_end(run_dir)
    db = psycopg2.connect(pg.url)
    db.autocommit = True
    client = redis.Redis.from_url(rs.url)
    procs: list[Process] = []
    try:
        log("raw COPY yardstick")
        copy_rate = bench_copy(db)
        with db.cursor() as cur:
            cur.execute("TRUNCATE telemetry")
            cur.execute("INSERT INTO devices (id, name) VALUES (1, 'bench-e2e') ON CONFLICT DO NOTHING")
        client.hset("vt:device-tokens", token_sha256(TOKEN), index_value(1, "active"))
        port = free_port()
        # One device sends the whole load: its rate limit is off.
        ingestor = Process("ingestor", "ingestor", {**env, "VT_LISTEN_ADDR": f"127.0.0.1:{port}", "VT_RATE_LIMIT": "0"},
                           run_dir / "logs" / "ingestor.log").start(run_dir)
        procs.append(ingestor)
        ingestor.wait_http(port)
        procs.append(Process("worker", "worker", env, run_dir / "logs" / "worker.log").start(run_dir))
        procs.append(Process("beat", "beat", env, run_dir / "logs" / "beat.log").start(run_dir))
        time.sleep(3)  # worker and beat up
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample():
            t0 = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - t0, backlog(client, "vt:telemetry", "aggregators")))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        base_ms = int(time.time() * 1000) - 3_600_000
        sampler.start()
        started = time.monotonic()
        out = subprocess.run(
            [str(gen), "--addr", f"127.0.0.1:{port}", "--path", "/api/ingest", "--rate", str(RATE),
             "--duration", str(SECONDS), "--connections", "16", "--threads", "1",
             "--header", f"Authorization: Bearer {TOKEN}", "--header", "Content-Type: application/json",
             "--body", body_template(base_ms)], capture_output=True, text=True, check=True).stdout.strip()
        sent_for = time.monotonic() - started
        stats = dict(kv.split("=", 1) for kv in out.split())
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM telemetry")
            at_end = cur.fetchone()[0]
        stop.set()
        sampler.join()
        accepted = (int(stats["requests"]) - int(stats["non_2xx"])) * 100
        # Then let the aggregator finish, to check that every accepted reading arrived exactly once.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and backlog(client, "vt:telemetry", "aggregators") > 0:
            time.sleep(0.5)
        time.sleep(1)
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM telemetry")
            stored = cur.fetchone()[0]
    finally:
        for proc in reversed(procs):
            proc.stop()
        db.close()
        rs.stop()
        pg.stop()
    stored_rate = at_end / sent_for
    backlogs = [b for _, b in samples]
    tail = backlogs[len(backlogs) // 2:]
    rows = [
        ("raw binary COPY into telemetry (yardstick)", f"{copy_rate:,.0f} readings/s", ""),
        ("accepted over HTTP (202)", f"{accepted / sent_for:,.0f} readings/s",
         f"{stats['requests']} requests, p99 {stats['p99_ms']} ms, non-2xx {stats['non_2xx']}"),
        ("stored in Postgres during the run", f"{stored_rate:,.0f} readings/s",
         f"{stored_rate / copy_rate:.0%} of COPY (target >= 60,000/s for {SECONDS}s)"),
        ("stream backlog (entries), 2nd half of the run", f"max {max(tail)}, last {backlogs[-1]}",
         f"first half max {max(backlogs[:len(backlogs) // 2] or [0])}; flat = the aggregator keeps up"),
        ("every accepted reading stored exactly once", "yes" if stored == accepted else "NO",
         f"{stored:,} rows for {accepted:,} accepted readings"),
    ]
    print_table(rows)
    print(json.dumps({"backlog_by_second": backlogs}))
    return 0 if stored == accepted else 1


if __name__ == "__main__":
    sys.exit(main())
