"""`make bench` (scale-out): what more aggregator processes and stream shards buy on this machine, and what
ingest costs on one Redis against a Redis Cluster of three masters.

1. Aggregator scaling. The same M readings (BENCH_SCALE_READINGS, entries of 100 readings from 100 devices,
   the stream format of docs/contracts.md) are written to VT_STREAM_SHARDS=N shards (a device to shard
   device_id % N), with the consumer group placed after them. N aggregator processes start, each reads its
   (empty) share once, and only then is the group pointed at the first entry: the clock runs from there
   until every reading is a row in Postgres, so Celery's start-up (seconds of CPU per worker, on cores the
   others already drain on) counts neither in the time nor in the CPU, and the slowest shard's tail does.

   The N processes are N Celery workers of VT_WORKER_CONCURRENCY=1 each (own node names, one beat beside
   them), as N one-process pods would run, rather than one worker with N pool processes: scaling out is
   adding workers, and each worker's parent process is part of what a worker costs. A worker's only process
   never listens on a shard (a node's last process never does, see VT_LIVE_DRAIN); with a full stream that
   changes nothing, since a drain that finds work hands over to a fresh drain of its shard at once, and
   beat schedules one per shard every 0.2 s besides. Rollups, latest values and per-device counts are on,
   as deployed; no alert rule exists; trims wait until after the run. Devices never share a shard, so the
   shards never wait on each other's rows in Postgres.

   Reported per N: readings/s, the speed-up against N=1, each rate as a share of a raw binary COPY of the
   same rows into the same table in the same run (the yardstick: the machine is shared, so only ratios
   compare across runs), and CPU seconds per million readings of the aggregator (workers and beat),
   Postgres and Redis, from /proc. CPU per reading is what scaling out costs: flat while more processes
   only add parallelism, growing when they contend (for the cores, for Postgres' WAL, for Redis).

   On 2 cores the aggregator (Python: decoding and encoding) and Postgres (the COPY and the upserts) share
   the machine. From N=1 to N=2 the rate can be near-linear while Postgres has spare CPU; at N=4 the two
   cores are busy and the rate flattens (or falls: four processes and their Postgres backends take turns
   on two cores) while the CPU per reading grows. Each row's note gives how many cores the run kept busy
   (ours, and the whole machine's from /proc/stat, other people's work included) and the most the cores
   allow: cores / cores busy at N=1, since one process with its Postgres backend already keeps more than
   one core busy. The table shows where it flattens and why; the header gives the machine's core count.

2. Ingest on one Redis and on a Redis Cluster. The Rust ingestor (stack.services.INGESTOR_BINARY;
   VT_INGESTOR_BINARY overrides it) is fed by bench/ingestor's fixed-rate load generator above what it can
   take (BENCH_SCALE_RATE requests/s of 100 readings, BENCH_SCALE_SINGLE_RATE of 1), from 12 devices so
   that 6 shards all get some, with no aggregator running (the high-water mark is raised, the streams grow).
   Reported: accepted readings/s and CPU microseconds per accepted reading of the ingestor and the Redis
   server(s), first against one Redis (VT_STREAM_SHARDS=1, as deployed today), then against
   stack.replicated.RedisCluster (3 masters, 3 replicas; VT_REDIS_CLUSTER=true, VT_STREAM_SHARDS=6). The
   replicas' CPU counts: a cluster without them loses data when a master dies. An ingestor that does not
   know VT_REDIS_CLUSTER (`--print-settings`) gets no cluster run: its rows say so instead of a figure.

Every server runs on free loopback ports and is stopped at the end. Environment: BENCH_SCALE_READINGS (M,
3,000,000: about 20 s for one process here), BENCH_SCALE_PROCESSES ("1,2,4"), BENCH_SCALE_INGEST_SECONDS
(10 per run), BENCH_SCALE_RATE (30,000 requests/s of 100 readings), BENCH_SCALE_SINGLE_RATE (120,000
requests/s of 1 reading). A row whose accepted rate is 95% of the offer or more says so: the offer, not the
ingestor, set that rate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.end_to_end import body_template, loadgen, time_prefix  # noqa: E402
from bench.pipeline import DERIVED, Shape, bench_copy, bench_entry, cpu_seconds, postmaster_pid  # noqa: E402
from bench.report import print_table  # noqa: E402
from stack.replicated import RedisCluster  # noqa: E402
from stack.servers import Postgres, Redis, free_port, scratch_dir  # noqa: E402
from stack.services import INGESTOR_BINARY, Process  # noqa: E402
from visiontrack.stream import shard_key_for, shard_keys  # noqa: E402
from visiontrack.tokens import index_value, token_sha256  # noqa: E402

READINGS = int(os.environ.get("BENCH_SCALE_READINGS", "3000000"))
PROCESSES = [int(n) for n in os.environ.get("BENCH_SCALE_PROCESSES", "1,2,4").split(",") if n.strip()]
INGEST_SECONDS = float(os.environ.get("BENCH_SCALE_INGEST_SECONDS", "10"))
RATE = int(os.environ.get("BENCH_SCALE_RATE", "30000"))
SINGLE_RATE = int(os.environ.get("BENCH_SCALE_SINGLE_RATE", "120000"))
STREAM = "vt:telemetry"
GROUP = "aggregators"
CLUSTER_SHARDS = 6
DEVICES = 12  # load devices of the ingest runs: two per shard of the cluster's six
TOKENS = [f"vtd_bench-scale-out-{device:02d}" for device in range(1, DEVICES + 1)]
NO_CLUSTER = "n/a (ingestor without VT_REDIS_CLUSTER)"


def log(msg: str) -> None:
    print(f"  .. {msg}", flush=True)


def shape(readings: int) -> Shape:
    """BENCH_SCALE_READINGS as entries of 100 readings from 100 devices (bench/pipeline.py's batched shape)."""
    return Shape("entries of 100 readings", max(1, readings // 100), 100, 100, 100, bench_entry)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, everyone's work), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def fill_shards(client: redis.Redis, shards: int, entries: Shape, base_ms: int) -> None:
    """Write `entries` to the shards as writers would: each device's entries to shard device_id % shards."""
    pipe = client.pipeline(transaction=False)
    for n in range(entries.entries):
        device, readings = entries.entry(n, base_ms)
        pipe.xadd(shard_key_for(STREAM, shards, device),
                  {"v": "1", "d": str(device), "r": json.dumps(readings, separators=(",", ":")), "at": str(base_ms)})
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()


def stored_readings(client: redis.Redis, keys: list[str], per_entry: int) -> int:
    """Readings the aggregators have acknowledged on every shard, i.e. committed to Postgres."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xinfo_groups(key)
    stored = 0
    for groups in pipe.execute(raise_on_error=False):
        if isinstance(groups, Exception):
            continue
        for g in groups:
            if g["name"] in (GROUP.encode(), GROUP):
                stored += (int(g.get("entries-read") or 0) - int(g["pending"])) * per_entry
    return stored


def consumer_nodes(client: redis.Redis, keys: list[str]) -> set[str]:
    """The Celery node names that have read from the shards (a consumer is made by its first read)."""
    nodes = set()
    for key in keys:
        for c in client.xinfo_consumers(key, GROUP):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            nodes.add(name.split("@", 1)[0])
    return nodes


@dataclass
class Drain:
    processes: int
    seconds: float  # from the moment the workers may read the readings to the last one committed
    cpu: dict[str, float]  # CPU seconds per part over those seconds
    readings: int
    ours_busy: float  # cores our processes kept busy over those seconds, on average
    machine_busy: float  # cores busy on the whole machine over those seconds

    @property
    def rate(self) -> float:
        return self.readings / self.seconds

    def cpu_per_million(self) -> float:
        return sum(self.cpu.values()) / self.readings * 1e6


def drain(env: dict, run_dir: Path, db, client: redis.Redis, pg: Postgres, rs: Redis, processes: int,
          entries: Shape) -> Drain:
    """N aggregator workers of one process each over N shards pre-filled with `entries`."""
    with db.cursor() as cur:
        cur.execute(f"TRUNCATE telemetry, {', '.join(DERIVED)}")
        cur.execute("DELETE FROM alert_rules")
        cur.execute("INSERT INTO devices (id, name, type) SELECT i, 'bench-' || i, 'bench' "
                    "FROM generate_series(1, %s) i ON CONFLICT DO NOTHING", (entries.devices,))
        cur.execute("UPDATE devices SET last_seen_at = NULL")
        cur.execute("CHECKPOINT")  # the last round's dirty pages written now, not during this one
    client.flushdb()  # streams, leases and Celery's queue of the last round
    keys = shard_keys(STREAM, processes)
    start_ms = int(time.time() * 1000) - entries.entries * entries.ms_per_entry - 60_000
    fill_shards(client, processes, entries, start_ms)
    total = entries.readings
    # The group starts past the readings: the workers start, connect and read nothing until every one of
    # them has read once; then the group is pointed at the start and the clock runs.
    for key in keys:
        client.xgroup_create(key, GROUP, id="$")
    log(f"{processes} shard(s) pre-filled with {entries.entries:,} {entries.name} ({total:,} readings)")
    # Trims only after the run (they would drop what the group has not been pointed at yet); a schedule
    # file of its own, so that nothing is due at once from the last round's.
    agg_env = {**env, "VT_STREAM_SHARDS": str(processes), "VT_WORKER_CONCURRENCY": "1",
               "VT_DRAIN_INTERVAL_SECONDS": "0.2", "VT_TRIM_INTERVAL_SECONDS": "3600",
               "VT_BEAT_SCHEDULE_FILE": str(run_dir / f"beat-schedule-{processes}")}
    workers = [Process(f"scale-worker-{processes}-{i}", "worker", agg_env,
                       run_dir / "logs" / f"worker-{processes}-{i}.log",
                       extra_args=["-n", f"scale{i}@%h"]).start(run_dir) for i in range(processes)]
    beat = Process(f"scale-beat-{processes}", "beat", agg_env, run_dir / "logs" / f"beat-{processes}.log")
    beat.start(run_dir)

    def alive() -> None:
        for w in (*workers, beat):
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.name} exited with {w.proc.returncode}; see {w.log}")

    def snapshot() -> tuple[float, dict[str, float], float]:
        """Now, CPU seconds so far per part, the machine's busy CPU seconds so far."""
        return (time.perf_counter(),
                {"aggregator": cpu_seconds([w.pid for w in workers] + [beat.pid]),
                 "postgres": cpu_seconds([postmaster_pid(pg)]), "redis": cpu_seconds([rs.proc.pid])},
                machine_busy_seconds())

    try:
        names = {f"scale{i}" for i in range(processes)}
        deadline = time.monotonic() + 180
        while not names <= consumer_nodes(client, keys):
            alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every aggregator worker read its stream within 3 minutes: {names}")
            time.sleep(0.1)
        first = snapshot()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.xgroup_setid(key, GROUP, id="0", entries_read=0)
        pipe.execute()
        deadline = time.monotonic() + 900
        while stored_readings(client, keys, entries.per_entry) < total:
            alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{processes} aggregator(s) did not store everything within 15 minutes")
            time.sleep(0.05)
        last = snapshot()
    finally:
        beat.stop()
        for w in workers:
            w.stop()
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry")
        rows = cur.fetchone()[0]
        cur.execute("SELECT coalesce(sum(count), 0) FROM telemetry_1m")
        rolled = cur.fetchone()[0]
    if rows != total or rolled != total:
        raise RuntimeError(f"{rows:,} rows and {rolled:,} readings in the 1-minute rollups, {total:,} expected")
    span = last[0] - first[0]
    cpu = {part: last[1][part] - first[1][part] for part in last[1]}
    return Drain(processes, span, cpu, total, sum(cpu.values()) / span, (last[2] - first[2]) / span)


def ingestor_knows_cluster() -> bool:
    out = subprocess.run([str(INGESTOR_BINARY), "--print-settings"], capture_output=True, text=True, timeout=30)
    try:
        return any(s.get("name") == "VT_REDIS_CLUSTER" for s in json.loads(out.stdout))
    except ValueError:
        return "VT_REDIS_CLUSTER" in out.stdout


@dataclass
class Ingest:
    target: str
    readings: int  # per request
    offered: float  # readings/s asked of the load generator
    rate: float  # accepted readings/s
    cpu: dict[str, float]  # CPU seconds per part
    accepted: int
    stats: dict

    def us_per_reading(self, part: str | None = None) -> float:
        spent = self.cpu[part] if part else sum(self.cpu.values())
        return spent / max(1, self.accepted) * 1e6


def ingest(gen: Path, run_dir: Path, target: str, url: str, redis_roots: dict[str, list[int]],
           client, keys: list[str], settings: dict, run: int) -> list[Ingest]:
    """The ingestor against one Redis or the cluster, each request shape in turn, nothing draining."""
    for device, token in enumerate(TOKENS, 1):
        client.hset("vt:device-tokens", token_sha256(token), index_value(device, "active"))
    port = free_port()
    env = {"REDIS_URL": url, "VT_LISTEN_ADDR": f"127.0.0.1:{port}", "VT_RATE_LIMIT": "0",
           "VT_STREAM_HIGH_WATER": "1000000000", "VT_LOG_LEVEL": "warning", **settings}
    ingestor = Process(f"ingestor-{target}", "ingestor", env, run_dir / "logs" / f"ingestor-{target}.log")
    ingestor.start(run_dir)
    results = []
    try:
        ingestor.wait_http(port)
        for readings in (100, 1):
            per_second = RATE if readings == 100 else SINGLE_RATE
            # Connections a multiple of the devices: every device, and so every shard, gets the same load.
            argv = [str(gen), "--addr", f"127.0.0.1:{port}", "--path", "/api/ingest", "--rate", str(per_second),
                    "--duration", str(INGEST_SECONDS), "--connections", str(DEVICES * (6 if readings == 1 else 2)),
                    "--threads", "1", "--seq-start", "1000000", "--tokens", ",".join(TOKENS),
                    "--header", "Content-Type: application/json", "--body", body_template(readings, time_prefix(run))]
            run += 1
            log(f"ingest into {target}: {per_second:,} requests/s of {readings} reading(s) for {INGEST_SECONDS:g}s")
            parts = {"ingestor": [ingestor.pid], **redis_roots}
            before = {part: cpu_seconds(roots) for part, roots in parts.items()}
            t0 = time.monotonic()
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
            sent_for = time.monotonic() - t0
            cpu = {part: cpu_seconds(roots) - before[part] for part, roots in parts.items()}
            stats = dict(kv.split("=", 1) for kv in out.split())
            accepted = (int(stats["requests"]) - int(stats["non_2xx"])) * readings
            results.append(Ingest(target, readings, per_second * readings, accepted / sent_for, cpu, accepted, stats))
            log(f"{target}: {accepted / sent_for:,.0f} readings/s, "
                f"{results[-1].us_per_reading():.2f} CPU us per reading")
            for key in keys:  # nothing drains: drop what the run wrote before the next
                client.delete(key)
    finally:
        ingestor.stop()
    return results


def ingest_rows(results: list[Ingest], label: str, base: list[Ingest] | None) -> list[tuple[str, str, str]]:
    rows = []
    for r in results:
        parts = ", ".join(f"{part} {r.us_per_reading(part):.2f}" for part in r.cpu)
        compare = ""
        if base:
            b = next(x for x in base if x.readings == r.readings)
            compare = f"; x{r.rate / b.rate:.2f} the rate and x{r.us_per_reading() / b.us_per_reading():.2f} " \
                      "the CPU per reading of one Redis"
        short = " (NOT above capacity: raise the offer)" if r.rate >= 0.95 * r.offered else ""
        rows.append((f"ingest, {r.readings} reading{'s' if r.readings != 1 else ''} per request, {label}",
                     f"{r.rate:,.0f} readings/s, {r.us_per_reading():.2f} CPU us/reading",
                     f"us per reading: {parts}; offered {r.offered:,.0f}/s{short}, {r.stats['requests']} requests, "
                     f"non-2xx {r.stats['non_2xx']}, p99 {r.stats['p99_ms']} ms{compare}"))
    return rows


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    if not INGESTOR_BINARY.exists():
        print(f"ingestor not built ({INGESTOR_BINARY}); run `make ingestor-build`", file=sys.stderr)
        return 1
    gen = loadgen()
    cores = os.cpu_count() or 1
    entries = shape(READINGS)
    load_at_start = load_average()
    run_dir = scratch_dir("vt-bench-scale-")
    pg = Postgres(run_dir / "pg", free_port(), run_dir / "logs" / "postgres.log")
    rs = Redis(run_dir / "redis", free_port(), run_dir / "logs" / "redis.log")
    print(f"VisionTrack benchmark (scale-out) on {cores} cores: {entries.readings:,} readings drained by "
          f"{', '.join(map(str, PROCESSES))} aggregator process(es); ingest on one Redis and a 3-master cluster")
    pg.start()
    rs.start()
    env = {"DATABASE_URL": pg.url, "REDIS_URL": rs.url, "VT_METRICS_PORT": "0", "VT_LOG_LEVEL": "warning",
           "VT_BEAT_SCHEDULE_FILE": str(run_dir / "beat-schedule")}
    Process("migrate", "migrate", env, run_dir / "logs" / "migrate.log").run_to_end(run_dir)
    db = psycopg2.connect(pg.url)
    db.autocommit = True
    client = redis.Redis.from_url(rs.url)
    drains: list[Drain] = []
    try:
        log(f"raw COPY yardstick: {entries.readings:,} readings")
        copy_rate = bench_copy(db, entries)
        log(f"raw COPY: {copy_rate:,.0f} readings/s")
        for n in PROCESSES:
            log(f"{n} aggregator worker(s) of one process over {n} shard(s)")
            drains.append(drain(env, run_dir, db, client, pg, rs, n, entries))
            d = drains[-1]
            log(f"{n} process(es): {d.rate:,.0f} readings/s, {d.cpu_per_million():.1f} CPU s per million readings")
    finally:
        db.close()
        client.close()
        rs.stop()
        pg.stop()

    single: list[Ingest] = []
    clustered: list[Ingest] = []
    one = Redis(run_dir / "redis-ingest", free_port(), run_dir / "logs" / "redis-ingest.log")
    one.start()
    try:
        one_client = redis.Redis.from_url(one.url)
        single = ingest(gen, run_dir, "one Redis", one.url, {"redis": [one.proc.pid]}, one_client, [STREAM],
                        {"VT_STREAM_SHARDS": "1"}, 0)
        one_client.close()
    finally:
        one.stop()
    knows_cluster = ingestor_knows_cluster()
    if knows_cluster:
        cluster = RedisCluster(run_dir / "cluster")
        try:
            log("starting a Redis Cluster: 3 masters, 3 replicas")
            cluster.start()
            from redis.cluster import RedisCluster as ClusterClient

            cluster_client = ClusterClient.from_url(cluster.url)
            masters = set(cluster.master_ports())
            roots = {"redis masters": [n.proc.pid for n in cluster.nodes if n.port in masters],
                     "redis replicas": [n.proc.pid for n in cluster.nodes if n.port not in masters]}
            clustered = ingest(gen, run_dir, "Redis Cluster", cluster.url, roots, cluster_client,
                               shard_keys(STREAM, CLUSTER_SHARDS),
                               {"VT_REDIS_CLUSTER": "true", "VT_STREAM_SHARDS": str(CLUSTER_SHARDS)}, 2)
            cluster_client.close()
        finally:
            cluster.stop()
    else:
        log(f"{INGESTOR_BINARY} does not know VT_REDIS_CLUSTER: no cluster run")

    base = drains[0] if drains else None
    rows = [("machine", f"{cores} cores",
             f"load average (1, 5, 15 min) {load_at_start} at the start, {load_average()} at the end; other work "
             "on the machine weighs on every rate"),
            ("raw binary COPY into telemetry (yardstick)", f"{copy_rate:,.0f} readings/s",
             f"{entries.readings:,} readings in one transaction")]
    for d in drains:
        what = f"aggregator, {d.processes} worker process{'es' if d.processes != 1 else ''} over " \
               f"{d.processes} shard{'s' if d.processes != 1 else ''}"
        rows.append((what, f"{d.rate:,.0f} readings/s",
                     f"{d.rate / copy_rate:.0%} of COPY; speed-up x{d.rate / base.rate:.2f} against 1 process "
                     f"(linear: x{d.processes / base.processes:g}, the cores allow x{cores / base.ours_busy:.2f}); "
                     f"all {d.readings:,} stored in {d.seconds:.1f} s; "
                     f"cores busy {d.ours_busy:.2f} ours, {d.machine_busy:.2f} of {cores} machine-wide"))
        rows.append((f"{what}: CPU per 1M readings", f"{d.cpu_per_million():.1f} s",
                     ", ".join(f"{part} {spent / d.readings * 1e6:.1f}" for part, spent in d.cpu.items())
                     + f"; x{d.cpu_per_million() / base.cpu_per_million():.2f} the CPU per reading of 1 process"))
    rows += ingest_rows(single, "one Redis (1 shard)", None)
    if knows_cluster:
        rows += ingest_rows(clustered, f"Redis Cluster, 3 masters + 3 replicas ({CLUSTER_SHARDS} shards)", single)
    else:
        for readings in (100, 1):
            rows.append((f"ingest, {readings} reading{'s' if readings != 1 else ''} per request, Redis Cluster, "
                         f"3 masters + 3 replicas ({CLUSTER_SHARDS} shards)", NO_CLUSTER,
                         f"{INGESTOR_BINARY} --print-settings lacks it; VT_INGESTOR_BINARY picks another build"))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
