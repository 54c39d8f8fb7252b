"""`make up` / `make down` / `make status`: the whole stack on one machine, no containers.

Everything lives under run/ in the checkout: data (Postgres, Redis), logs, pid files. `up` is
idempotent (a part already running is left alone); `down` stops exactly what `up` started.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import prometheus as prom
from .nginx import Nginx
from .servers import Postgres, Redis, StackError
from .services import INGESTOR_BINARY, ROOT, Process

RUN = Path(os.environ.get("VT_RUN_DIR", ROOT / "run"))
LOGS = RUN / "logs"
PIDS = RUN / "pids"


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Ports:
    http: int = _port("VT_HTTP_PORT", 8080)
    postgres: int = _port("VT_PG_PORT", 55432)
    redis: int = _port("VT_REDIS_PORT", 56379)
    ingestor: int = _port("VT_INGESTOR_PORT", 58001)
    registry: int = _port("VT_REGISTRY_PORT", 58002)
    query: int = _port("VT_QUERY_PORT", 58003)
    worker_metrics: int = _port("VT_WORKER_METRICS_PORT", 59101)
    beat_metrics: int = _port("VT_BEAT_METRICS_PORT", 59102)
    prometheus: int = _port("VT_PROMETHEUS_PORT", 59090)
    redis_exporter: int = _port("VT_REDIS_EXPORTER_PORT", 59121)
    postgres_exporter: int = _port("VT_POSTGRES_EXPORTER_PORT", 59187)


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _admin_token() -> str:
    given = os.environ.get("VT_ADMIN_TOKEN")
    path = RUN / "admin-token"
    if given:
        path.write_text(given)
        return given
    if path.exists():
        return path.read_text().strip()
    token = "vta_" + secrets.token_urlsafe(24)
    path.write_text(token)
    path.chmod(0o600)
    return token


def _postgres_data_dir() -> Path:
    """run/pg when the postgres user can reach it; otherwise a folder it can, linked from run/pg."""
    wanted = RUN / "pg"
    if wanted.is_symlink() or os.geteuid() != 0:
        return wanted.resolve() if wanted.is_symlink() else wanted
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(RUN)], capture_output=True)
    if probe.returncode == 0:
        return wanted
    outside = Path("/var/tmp") / f"visiontrack-{hashlib.sha1(str(RUN).encode()).hexdigest()[:10]}" / "pg"
    outside.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(outside.parent, 0o755)
    if not wanted.exists():
        wanted.symlink_to(outside)
    say(f"Postgres data in {outside} (the postgres user cannot reach {RUN}); linked from {wanted}")
    return outside


def _alive(name: str) -> int | None:
    pid_file = PIDS / f"{name}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
        return pid
    except ProcessLookupError:
        pid_file.unlink()
        return None


def _record(name: str, pid: int) -> None:
    (PIDS / f"{name}.pid").write_text(str(pid))


def _env(pg: Postgres, redis: Redis, admin: str) -> dict[str, str]:
    return {
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis.url,
        "VT_ADMIN_TOKENS": admin,
        "VT_READER_TOKENS": os.environ.get("VT_READER_TOKENS", ""),
        "VT_BEAT_SCHEDULE_FILE": str(RUN / "beat-schedule"),
    }


def _start(name: str, part: str, env: dict, ready_port: int, ready_path: str = "/readyz") -> None:
    if _alive(name):
        say(f"{name} already running")
        return
    proc = Process(name, part, env, LOGS / f"{name}.log").start(RUN)
    _record(name, proc.pid)
    proc.wait_http(ready_port, ready_path, timeout=60)
    say(f"{name} started (pid {proc.pid}, log {LOGS / (name + '.log')})")


def up(args: argparse.Namespace) -> int:
    for d in (RUN, LOGS, PIDS):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(RUN, 0o755)
    ports = Ports()
    admin = _admin_token()
    pg = Postgres(_postgres_data_dir(), ports.postgres, LOGS / "postgres.log")
    redis = Redis(RUN / "redis", ports.redis, LOGS / "redis.log")
    if pg.running():
        say("Postgres already running")
    else:
        say(f"starting Postgres on 127.0.0.1:{ports.postgres}")
        pg.start()
    if _alive("redis"):
        say("Redis already running")
    else:
        say(f"starting Redis on 127.0.0.1:{ports.redis} (AOF everysec, noeviction)")
        redis.start()
        _record("redis", redis.proc.pid)
    env = _env(pg, redis, admin)
    say("applying migrations")
    Process("migrate", "migrate", env, LOGS / "migrate.log").run_to_end(RUN)
    _start("registry", "registry", {**env, "VT_HTTP_BIND": f"127.0.0.1:{ports.registry}"}, ports.registry)
    _start("query", "query", {**env, "VT_HTTP_BIND": f"127.0.0.1:{ports.query}"}, ports.query)
    upstreams = {"registry": ports.registry, "query": ports.query}
    if INGESTOR_BINARY.exists():
        _start("ingestor", "ingestor", {**env, "VT_LISTEN_ADDR": f"127.0.0.1:{ports.ingestor}"}, ports.ingestor)
        upstreams["ingestor"] = ports.ingestor
    else:
        say(f"WARNING: {INGESTOR_BINARY} is not built; /api/ingest is off (run `make ingestor-build`)")
    # Worker and beat serve /metrics once started: that is their readiness.
    _start("worker", "worker", {**env, "VT_METRICS_PORT": str(ports.worker_metrics)}, ports.worker_metrics, "/metrics")
    _start("beat", "beat", {**env, "VT_METRICS_PORT": str(ports.beat_metrics)}, ports.beat_metrics, "/metrics")
    _start_monitoring(ports, env, upstreams)
    if _alive("nginx"):
        say("nginx already running")
    else:
        nginx = Nginx(ports.http, upstreams, RUN / "nginx", LOGS)
        nginx.start()
        _record("nginx", nginx.proc.pid)
        say(f"nginx routing the ingress paths on 127.0.0.1:{ports.http}")
    base = f"http://127.0.0.1:{ports.http}"
    if os.environ.get("SIM", "1") != "0":
        sim_env = {"VT_URL": base, "VT_ADMIN_TOKEN": admin, "SIM_DEVICES": os.environ.get("SIM_DEVICES", "20"),
                   "SIM_STATE": str(RUN / "simulator.json"), "PYTHONPATH": str(ROOT)}
        if _alive("simulator"):
            say("simulator already running")
        else:
            log = open(LOGS / "simulator.log", "ab")
            proc = subprocess.Popen([sys.executable, "-m", "stack.simulator"], env={**os.environ, **sim_env},
                                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            _record("simulator", proc.pid)
            say(f"simulator feeding {sim_env['SIM_DEVICES']} devices (log {LOGS / 'simulator.log'})")
    _summary(base, admin)
    return 0


def _start_monitoring(ports: Ports, env: dict, upstreams: dict[str, int]) -> None:
    """The Redis and Postgres exporters, then Prometheus scraping every process with the chart's rules."""
    stream_key = os.environ.get("VT_STREAM_KEY", "vt:telemetry")
    for daemon in (prom.redis_exporter(ports.redis_exporter, env["REDIS_URL"], stream_key, LOGS / "redis-exporter.log"),
                   prom.postgres_exporter(ports.postgres_exporter, env["DATABASE_URL"], LOGS / "postgres-exporter.log")):
        if _alive(daemon.name):
            say(f"{daemon.name} already running")
            continue
        daemon.start()
        _record(daemon.name, daemon.pid)
        say(f"{daemon.name} on {daemon.url}/metrics (pid {daemon.pid})")
    if _alive("prometheus"):
        say("Prometheus already running")
        return
    targets = {f"visiontrack-{part}": [f"127.0.0.1:{port}"] for part, port in upstreams.items()}
    targets.update({
        "visiontrack-worker": [f"127.0.0.1:{ports.worker_metrics}"],
        "visiontrack-beat": [f"127.0.0.1:{ports.beat_metrics}"],
        "visiontrack-redis-exporter": [f"127.0.0.1:{ports.redis_exporter}"],
        "visiontrack-postgres-exporter": [f"127.0.0.1:{ports.postgres_exporter}"],
        "prometheus": [f"127.0.0.1:{ports.prometheus}"],
    })
    daemon = prom.start_prometheus(prom.prometheus(ports.prometheus, RUN / "prometheus", targets,
                                                   LOGS / "prometheus.log"))
    _record("prometheus", daemon.pid)
    say(f"Prometheus on {daemon.url} scraping {len(targets)} jobs with {prom.RULES.relative_to(ROOT)}")


def _summary(base: str, admin: str) -> None:
    print(f"""
VisionTrack is up.
  API (ingress)   {base}
  Prometheus      http://127.0.0.1:{Ports().prometheus}   (targets: /targets, alerts: /alerts)
  OpenAPI         {base}/api/devices/openapi.json   {base}/api/telemetry/openapi.json
  admin token     {admin}
  logs            {LOGS}/
  stop            make down

Try it:
  export VT={base} ADMIN={admin}
  curl -s -X POST $VT/api/devices/ -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \\
       -d '{{"name": "my-sensor", "type": "thermometer"}}'
  # take "id" and "token" from the answer, then:
  curl -s -X POST $VT/api/ingest -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"temperature": 21.5, "humidity": 40}}'
  curl -s "$VT/api/telemetry/?device_id=$ID" -H "Authorization: Bearer $ADMIN"
""", flush=True)


def down(args: argparse.Namespace) -> int:
    order = ["simulator", "prometheus", "redis-exporter", "postgres-exporter", "nginx", "ingestor", "registry",
             "query", "beat", "worker", "redis"]
    for name in order:
        pid = _alive(name)
        if not pid:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(name):
            time.sleep(0.1)
        if _alive(name):
            os.killpg(pid, signal.SIGKILL)
        (PIDS / f"{name}.pid").unlink(missing_ok=True)
        say(f"stopped {name}")
    pg = Postgres((RUN / "pg").resolve(), Ports().postgres, LOGS / "postgres.log")
    if pg.running():
        pg.stop()
        say("stopped Postgres")
    return 0


def status(args: argparse.Namespace) -> int:
    names = ["redis", "registry", "query", "ingestor", "worker", "beat", "nginx", "simulator", "prometheus",
             "redis-exporter", "postgres-exporter"]
    for name in names:
        pid = _alive(name)
        print(f"{name:17} {'running (pid %d)' % pid if pid else 'stopped'}")
    pg = Postgres((RUN / "pg").resolve(), Ports().postgres, LOGS / "postgres.log")
    print(f"{'postgres':17} {'running' if pg.running() else 'stopped'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        sub.add_parser(name)
    args = parser.parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status}[args.command](args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
