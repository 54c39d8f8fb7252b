"""`make bench` (whole pipeline): HTTP into the Rust ingestor → Redis stream → aggregator → rows in Postgres.

Throughput: a fixed-rate load (bench/ingestor/loadgen, keep-alive) sends requests of BENCH_E2E_READINGS
readings each for BENCH_E2E_SECONDS (60); every reading is distinct, so every one must become a row.
BENCH_E2E_READINGS takes a comma-separated list ("100,1": batched requests, then one reading per request,
as most devices send them), each shape run in turn. Reported per shape: the rate accepted over HTTP, the
rate that reached Postgres, the stream backlog over time (flat means the aggregator keeps up), whether
every accepted reading was stored exactly once, and the ratio to a raw binary COPY measured in the same run
(the yardstick: the machine is shared, so only ratios compare across runs).

The CPU each part spent during a shape's run (and its drain after), per stored reading, says where a
reading's cost goes: the load generator, the ingestor, Redis, the aggregator's worker processes, Postgres.

Freshness (bench/freshness.py): under a background load of one-reading requests at 1,000 and 10,000
readings/s, and at the highest rate each shape sustains (90% of its best stored rate above, then 75% and
60% while the backlog grows or probes are lost), a probe device posts BENCH_FRESH_PROBES readings one at
a time and times each until `GET /api/telemetry/latest` shows it; p50 and p99 per offered rate.

Each shape runs twice by default: with the ingestor's group append (requests that arrive together share a
stream entry, VT_STREAM_ENTRY_MAX_REQUESTS=256) and with one entry per request (=1, the stream as it was
before group append), so the same run shows what grouping gains and that batched requests lose nothing.

Environment: BENCH_E2E_ENTRY_MAX ("256,1": the VT_STREAM_ENTRY_MAX_REQUESTS values to compare),
BENCH_E2E_READINGS ("100,1": both shapes), BENCH_E2E_RATE (requests/s of the batched shapes,
4,000 = 400,000 readings/s of 100: above what the machine sustains, so the stored rate is the pipeline's
capacity), BENCH_E2E_SINGLE_RATE (requests/s of one reading, 80,000: above it too, for the same reason),
BENCH_E2E_SECONDS (60), BENCH_E2E_WORKERS (aggregator processes, 2), BENCH_FRESH_PROBES (200; 0 skips
freshness).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.freshness import Freshness, probe  # noqa: E402
from bench.pipeline import bench_copy, cpu_seconds, postmaster_pid  # noqa: E402
from bench.report import print_table  # noqa: E402
from stack.servers import Postgres, Redis, free_port, scratch_dir  # noqa: E402
from stack.services import INGESTOR_BINARY, Process  # noqa: E402
from visiontrack.stream import backlog  # noqa: E402
from visiontrack.tokens import index_value, token_sha256  # noqa: E402

SHAPES = [int(n) for n in os.environ.get("BENCH_E2E_READINGS", "100,1").split(",") if n.strip()]
ENTRY_MAX = [int(n) for n in os.environ.get("BENCH_E2E_ENTRY_MAX", "256,1").split(",") if n.strip()]
RATE = int(os.environ.get("BENCH_E2E_RATE", "4000"))
SINGLE_RATE = int(os.environ.get("BENCH_E2E_SINGLE_RATE", "80000"))
SECONDS = int(os.environ.get("BENCH_E2E_SECONDS", "60"))
WORKERS = os.environ.get("BENCH_E2E_WORKERS", "2")
FRESH_PROBES = int(os.environ.get("BENCH_FRESH_PROBES", "200"))
FRESH_RATES = (1_000, 10_000)  # readings/s of one-reading requests, then the sustained maximum of each shape
SUSTAINED_BACKLOG = 10_000  # entries left at the end of a freshness run above which its rate did not hold
LOADGEN_DIR = ROOT / "bench" / "ingestor" / "loadgen"
STREAM = "vt:telemetry"
TOKEN = "vtd_bench-end-to-end-token"
PROBE_TOKEN = "vtd_bench-end-to-end-probe"
READER = "bench-reader-token-0123456789"
LOAD_DEVICE, PROBE_DEVICE = 1, 2
SEQ_START = 1_000_000  # the loadgen's {seq} then has 7 digits up to 9,999,999 requests


def log(msg: str) -> None:
    print(f"  .. {msg}", flush=True)


def loadgen() -> Path:
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=LOADGEN_DIR, check=True)
    return LOADGEN_DIR / "target" / "release" / "vt-loadgen"


def body_template(readings: int, prefix: int) -> str:
    """`readings` readings at a time unique to the request: the loadgen's seven-digit {seq} ends the epoch ms
    (`prefix` * 10^7 + seq), so every request of a run has its own time."""
    values = ",".join(f'"m{k}":{k}.5' for k in range(readings))
    return '{"ts":' + str(prefix) + '{seq},"values":{' + values + "}}"


def time_prefix(run: int) -> int:
    """A 10^7 ms window of its own per run, hours old (never in the future, well within retention)."""
    return (int(time.time() * 1000) - 3_600_000) // 10**7 - 2 * run


@dataclass
class Stack:
    gen: Path
    db: object
    client: redis.Redis
    ingest_url: str
    query_url: str
    parts: dict[str, list[int]]  # process trees by part, for the CPU they spend

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per part; `loadgen` is this process's reaped children (only loadgen runs end)."""
        spent = {part: cpu_seconds(roots) for part, roots in self.parts.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent["loadgen"] = children.ru_utime + children.ru_stime
        return spent

    def loadgen_argv(self, readings: int, requests_per_second: float, seconds: float, run: int) -> list[str]:
        host = self.ingest_url.removeprefix("http://")
        return [str(self.gen), "--addr", host, "--path", "/api/ingest", "--rate", f"{requests_per_second:.1f}",
                "--duration", str(seconds), "--connections", "64" if readings == 1 else "16", "--threads", "1",
                "--seq-start", str(SEQ_START),
                "--header", f"Authorization: Bearer {TOKEN}", "--header", "Content-Type: application/json",
                "--body", body_template(readings, time_prefix(run))]

    def accepted_readings(self) -> float:
        """Readings the ingestor has written to the stream so far (its readings_accepted_total)."""
        with urllib.request.urlopen(f"{self.ingest_url}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("visiontrack_ingestor_readings_accepted_total"):
                    return float(line.split()[-1])
        return 0.0

    def rows(self) -> int:
        with self.db.cursor() as cur:
            cur.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (LOAD_DEVICE,))
            return cur.fetchone()[0]

    def backlog(self) -> int:
        return backlog(self.client, STREAM, "aggregators")

    def settle(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.backlog() > 0:
            time.sleep(0.5)
        time.sleep(1)

    def clear(self) -> None:
        self.settle()
        with self.db.cursor() as cur:
            cur.execute("TRUNCATE telemetry, telemetry_1m, telemetry_1h, telemetry_latest")


@dataclass
class Throughput:
    readings: int
    entry_max: int  # VT_STREAM_ENTRY_MAX_REQUESTS of the ingestor
    accepted_rate: float
    stored_rate: float
    backlogs: list[int]
    stats: dict
    stored: int
    accepted: int
    cpu: dict[str, float]  # CPU seconds per part during the run

    def cpu_per_reading(self) -> str:
        """Microseconds of CPU per stored reading, by part: where a reading's cost goes."""
        stored = max(1, self.stored)
        parts = sorted(self.cpu.items(), key=lambda kv: -kv[1])
        total = sum(self.cpu.values()) / stored * 1e6
        return f"{total:.1f} us/reading: " + ", ".join(f"{p} {v / stored * 1e6:.1f}" for p, v in parts)


def throughput(stack: Stack, readings: int, entry_max: int, run: int) -> Throughput:
    per_second = SINGLE_RATE if readings == 1 else RATE
    log(f"throughput: {per_second:,} requests/s of {readings} reading(s) for {SECONDS}s, "
        f"entries of up to {entry_max} request(s)")
    stack.clear()
    samples: list[int] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(stack.backlog())
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = stack.cpu()
    started = time.monotonic()
    out = subprocess.run(stack.loadgen_argv(readings, per_second, SECONDS, run), capture_output=True, text=True,
                         check=True).stdout.strip()
    sent_for = time.monotonic() - started
    at_end = stack.rows()
    stop.set()
    sampler.join()
    stats = dict(kv.split("=", 1) for kv in out.split())
    accepted = (int(stats["requests"]) - int(stats["non_2xx"])) * readings
    stack.settle()  # then let the aggregator finish: every accepted reading must arrive, once
    cpu = {part: spent - cpu_before[part] for part, spent in stack.cpu().items()}
    return Throughput(readings, entry_max, accepted / sent_for, at_end / sent_for, samples, stats, stack.rows(),
                      accepted, cpu)


def freshness(stack: Stack, readings: int, readings_per_second: float, run: int) -> tuple[Freshness, float, int]:
    """Probe under a background load; returns the probe's result, the offered rate measured at the stream
    (readings/s) and the backlog at the end of the probes."""
    log(f"freshness: {FRESH_PROBES} probes beside {readings_per_second:,.0f} readings/s "
        f"in requests of {readings}")
    stack.clear()
    load = subprocess.Popen(stack.loadgen_argv(readings, readings_per_second / readings, 3600, run),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # the load settles first
        before, t0 = stack.accepted_readings(), time.monotonic()
        log(f"backlog before the probes: {stack.backlog()} entries")
        result = probe(stack.ingest_url, PROBE_TOKEN, stack.query_url, READER, PROBE_DEVICE, FRESH_PROBES)
        offered = (stack.accepted_readings() - before) / (time.monotonic() - t0)
        left = stack.backlog()
    finally:
        load.terminate()
        load.wait(10)
    return result, offered, left


def main() -> int:
    if not INGESTOR_BINARY.exists():
        print(f"ingestor not built ({INGESTOR_BINARY}); run `make ingestor-build`", file=sys.stderr)
        return 1
    gen = loadgen()
    run_dir = scratch_dir("vt-bench-e2e-")
    pg = Postgres(run_dir / "pg", free_port(), run_dir / "logs" / "postgres.log")
    rs = Redis(run_dir / "redis", free_port(), run_dir / "logs" / "redis.log")
    print(f"VisionTrack benchmark (whole pipeline): requests of {', '.join(map(str, SHAPES))} reading(s) "
          f"for {SECONDS}s each; freshness with {FRESH_PROBES} probes per rate")
    pg.start()
    rs.start()
    env = {"DATABASE_URL": pg.url, "REDIS_URL": rs.url, "VT_METRICS_PORT": "0", "VT_LOG_LEVEL": "warning",
           "VT_BEAT_SCHEDULE_FILE": str(run_dir / "beat-schedule"), "VT_WORKER_CONCURRENCY": WORKERS,
           "VT_READER_TOKENS": READER}
    Process("migrate", "migrate", env, run_dir / "logs" / "migrate.log").run_to_end(run_dir)
    db = psycopg2.connect(pg.url)
    db.autocommit = True
    client = redis.Redis.from_url(rs.url)
    procs: list[Process] = []
    results: list[Throughput] = []
    fresh: list[tuple[str, Freshness, float, int]] = []
    try:
        log("raw COPY yardstick")
        copy_rate = bench_copy(db)
        with db.cursor() as cur:
            cur.execute("TRUNCATE telemetry")
            cur.execute("INSERT INTO devices (id, name) VALUES (%s, 'bench-e2e'), (%s, 'bench-probe') "
                        "ON CONFLICT DO NOTHING", (LOAD_DEVICE, PROBE_DEVICE))
            # In Postgres too: the aggregator rebuilds the token index from there every minute.
            cur.execute("INSERT INTO device_tokens (device_id, token_sha256) VALUES (%s, %s), (%s, %s) "
                        "ON CONFLICT DO NOTHING", (LOAD_DEVICE, token_sha256(TOKEN), PROBE_DEVICE,
                                                   token_sha256(PROBE_TOKEN)))
        client.hset("vt:device-tokens", mapping={token_sha256(TOKEN): index_value(LOAD_DEVICE, "active"),
                                                 token_sha256(PROBE_TOKEN): index_value(PROBE_DEVICE, "active")})
        port, query_port = free_port(), free_port()

        def start_ingestor(entry_max: int) -> Process:
            # One device sends the whole load: its rate limit is off.
            settings = {**env, "VT_LISTEN_ADDR": f"127.0.0.1:{port}", "VT_RATE_LIMIT": "0",
                        "VT_STREAM_ENTRY_MAX_REQUESTS": str(entry_max)}
            proc = Process(f"ingestor-{entry_max}", "ingestor", settings,
                           run_dir / "logs" / f"ingestor-{entry_max}.log").start(run_dir)
            proc.wait_http(port)
            return proc

        ingestor = start_ingestor(ENTRY_MAX[0])
        procs.append(ingestor)
        query = Process("query", "query", {**env, "VT_HTTP_BIND": f"127.0.0.1:{query_port}"},
                        run_dir / "logs" / "query.log").start(run_dir)
        procs.append(query)
        query.wait_http(query_port)
        worker = Process("worker", "worker", env, run_dir / "logs" / "worker.log").start(run_dir)
        procs.append(worker)
        procs.append(Process("beat", "beat", env, run_dir / "logs" / "beat.log").start(run_dir))
        time.sleep(3)  # worker and beat up
        parts = {"ingestor": [ingestor.pid], "redis": [rs.proc.pid], "postgres": [postmaster_pid(pg)],
                 "aggregator": [worker.pid]}
        stack = Stack(gen, db, client, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{query_port}", parts)
        run = 0
        for entry_max in ENTRY_MAX:
            if entry_max != ENTRY_MAX[0]:
                ingestor.stop()
                procs.remove(ingestor)
                ingestor = start_ingestor(entry_max)
                procs.append(ingestor)
                stack.parts["ingestor"] = [ingestor.pid]
            for readings in SHAPES:
                results.append(throughput(stack, readings, entry_max, run))
                run += 1
        if ENTRY_MAX[-1] != ENTRY_MAX[0]:  # freshness with the default ingestor
            ingestor.stop()
            procs.remove(ingestor)
            ingestor = start_ingestor(ENTRY_MAX[0])
            procs.append(ingestor)
            stack.parts["ingestor"] = [ingestor.pid]
        if FRESH_PROBES > 0:
            for rate in FRESH_RATES:
                fresh.append((f"{rate:,} readings/s (1 per request)", *freshness(stack, 1, rate, run)))
                run += 1
            for shape in SHAPES:  # the highest rate that holds: 90% of the best stored, lower while it does not
                best = max((r for r in results if r.entry_max == ENTRY_MAX[0] and r.readings == shape),
                           key=lambda r: r.stored_rate, default=None)
                for share in (0.9, 0.75, 0.6) if best else ():
                    result, offered, left = freshness(stack, shape, share * best.stored_rate, run)
                    run += 1
                    fresh.append((f"{share:.0%} of the best stored rate, {best.stored_rate:,.0f}/s ({shape} per "
                                  f"request)", result, offered, left))
                    if not result.lost and not result.refused and left < SUSTAINED_BACKLOG:
                        break
    finally:
        for proc in reversed(procs):
            proc.stop()
        db.close()
        rs.stop()
        pg.stop()
    rows = [("raw binary COPY into telemetry (yardstick)", f"{copy_rate:,.0f} readings/s", "")]
    ok = True
    for r in results:
        tail = r.backlogs[len(r.backlogs) // 2:] or [0]
        once = r.stored == r.accepted
        ok = ok and once
        shape = f"{r.readings} reading{'s' if r.readings != 1 else ''} per request, " + \
            ("one entry per request" if r.entry_max == 1 else f"entries of up to {r.entry_max} requests")
        rows += [
            (f"{shape}: accepted over HTTP (202)", f"{r.accepted_rate:,.0f} readings/s",
             f"{r.stats['requests']} requests, p99 {r.stats['p99_ms']} ms, non-2xx {r.stats['non_2xx']}"),
            (f"{shape}: stored in Postgres during the run", f"{r.stored_rate:,.0f} readings/s",
             f"{r.stored_rate / copy_rate:.0%} of COPY"),
            (f"{shape}: stream backlog (entries), 2nd half",
             f"max {max(tail)}, last {r.backlogs[-1] if r.backlogs else 0}",
             f"first half max {max(r.backlogs[:len(r.backlogs) // 2] or [0])}; flat = the aggregator keeps up"),
            (f"{shape}: every accepted reading stored exactly once", "yes" if once else "NO",
             f"{r.stored:,} rows for {r.accepted:,} accepted readings"),
            (f"{shape}: CPU per reading, by part", r.cpu_per_reading().split(": ", 1)[0],
             r.cpu_per_reading().split(": ", 1)[1]),
        ]
    for label, f, offered, left in fresh:
        rows.append((f"freshness beside {label}",
                     f"p50 {f.median * 1000:.0f} ms, p99 {f.quantile(0.99) * 1000:.0f} ms",
                     f"{len(f.seconds)} probes, {f.lost} lost, {f.refused} refused (503); offered {offered:,.0f} "
                     f"readings/s; backlog at end {left}"))
    print_table(rows)
    print(json.dumps({f"backlog_by_second_{r.readings}_{r.entry_max}": r.backlogs for r in results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
