"""`make up` / `make down` / `make status`: the whole stack on one machine, no containers.

Everything lives under run/ in the checkout: data (Postgres, Redis), logs, pid files. `up` is
idempotent (a part already running is left alone); `down` stops exactly what `up` started. If `up` fails
part-way, it stops what that run had started (what an earlier `up` started keeps running), names the part
that failed with the end of its log, and exits 1.

Whether a part runs is judged by its process, never by a file alone (stack/liveness.py): a crash, an OOM kill
or a reboot leaves pid files behind, and `up` starts every part whose process is gone, clearing what the
crash left in its way (Postgres' postmaster.pid and socket lock, records of pids other processes hold now).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import liveness
from . import prometheus as prom
from .nginx import Nginx
from .servers import Postgres, Redis, StackError, _tail
from .services import INGESTOR_BINARY, ROOT, Process

RUN = Path(os.environ.get("VT_RUN_DIR", ROOT / "run"))
LOGS = RUN / "logs"
PIDS = RUN / "pids"


# The local stack's fixed ports (field of Ports: its environment variable, its default). All of them lie below
# 32768, outside Linux's ephemeral range (32768-60999 by default, net.ipv4.ip_local_port_range) and the IANA one
# (49152-65535): a port inside it can be taken at any moment as the local end of some outgoing connection (a
# Redis client's, say), and the server meant for it then fails with "address already in use". The scheme: each
# part's usual port plus 10000 (Postgres 15432, Redis 16379, Prometheus 19090, the exporters 19121 and 19187),
# VisionTrack's own services 18001-18003 (ingestor, registry, query) and the Celery metrics 19101-19102. The
# ingress stays on 8080; the simulator's webhook receiver is on 18090 (stack/simulator.py).
PORT_SETTINGS: dict[str, tuple[str, int]] = {
    "http": ("VT_HTTP_PORT", 8080),
    "postgres": ("VT_PG_PORT", 15432),
    "redis": ("VT_REDIS_PORT", 16379),
    "ingestor": ("VT_INGESTOR_PORT", 18001),
    "mqtt": ("VT_MQTT_PORT", 11883),
    "registry": ("VT_REGISTRY_PORT", 18002),
    "query": ("VT_QUERY_PORT", 18003),
    "worker_metrics": ("VT_WORKER_METRICS_PORT", 19101),
    "beat_metrics": ("VT_BEAT_METRICS_PORT", 19102),
    "prometheus": ("VT_PROMETHEUS_PORT", 19090),
    "redis_exporter": ("VT_REDIS_EXPORTER_PORT", 19121),
    "postgres_exporter": ("VT_POSTGRES_EXPORTER_PORT", 19187),
}


def _port(field_name: str) -> int:
    name, default = PORT_SETTINGS[field_name]
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Ports:
    http: int = _port("http")
    postgres: int = _port("postgres")
    redis: int = _port("redis")
    ingestor: int = _port("ingestor")
    mqtt: int = _port("mqtt")
    registry: int = _port("registry")
    query: int = _port("query")
    worker_metrics: int = _port("worker_metrics")
    beat_metrics: int = _port("beat_metrics")
    prometheus: int = _port("prometheus")
    redis_exporter: int = _port("redis_exporter")
    postgres_exporter: int = _port("postgres_exporter")


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


def _postgres_log(data_dir: Path) -> Path:
    """run/logs/postgres.log, or beside the data where that had to move (the postgres user writes it), linked
    from run/logs."""
    wanted = LOGS / "postgres.log"
    if data_dir.parent == RUN:
        return wanted
    outside = data_dir.parent / "postgres.log"
    LOGS.mkdir(parents=True, exist_ok=True)
    if not wanted.is_symlink():
        wanted.unlink(missing_ok=True)
        wanted.symlink_to(outside)
    return outside


def _alive(name: str) -> int | None:
    """The pid of a part recorded in run/pids while that very process runs (stack/liveness.py); a record of
    a process that is gone (killed, crashed, a reboot since) is removed."""
    pid_file = PIDS / f"{name}.pid"
    identity = liveness.read_pid_file(pid_file)
    if identity is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(identity.pid, os.WNOHANG)  # reap it if it is a child of ours that exited
        if liveness.is_running(identity):
            return identity.pid
    pid_file.unlink(missing_ok=True)
    return None


def _record(name: str, pid: int) -> None:
    liveness.write_pid_file(PIDS / f"{name}.pid", pid)


# Every part `up` may start, in the order it starts them (`down` stops them the other way round), with the
# field of Ports it listens on (the simulator listens on none of the stack's).
_PARTS = {"postgres": "postgres", "redis": "redis", "registry": "registry", "query": "query", "ingestor": "ingestor",
          "worker": "worker_metrics", "beat": "beat_metrics", "redis-exporter": "redis_exporter",
          "postgres-exporter": "postgres_exporter", "prometheus": "prometheus", "nginx": "http", "simulator": None}


def _local_postgres() -> Postgres:
    return Postgres((RUN / "pg").resolve(), Ports().postgres, LOGS / "postgres.log")


def _pid(name: str) -> int | None:
    """The pid of a part while it runs, judged by the process, never by a file alone."""
    return _local_postgres().pid() if name == "postgres" else _alive(name)


def _running(name: str) -> bool:
    return _pid(name) is not None


def _stop(name: str) -> bool:
    """Stop a part recorded in run/pids (its whole process group): SIGTERM, then SIGKILL after 30 s."""
    if name == "postgres":
        pg = _local_postgres()
        if not pg.running():
            return False
        pg.stop()
        return True
    pid = _alive(name)
    if not pid:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        (PIDS / f"{name}.pid").unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(name):
        time.sleep(0.1)
    if _alive(name):
        os.killpg(pid, signal.SIGKILL)
    (PIDS / f"{name}.pid").unlink(missing_ok=True)
    return True


class PartFailed(StackError):
    """A part of the stack did not start: which one, why, and the end of its log."""

    def __init__(self, part: str, log: Path | None, reason: str):
        tail = "" if "--- last lines of" in reason else _tail(log)
        super().__init__(f"{part} did not start: {reason}{tail}")
        self.part = part


@contextmanager
def _starting(part: str, log: Path | None) -> Iterator[None]:
    """Any failure inside names `part`, with the end of its log."""
    try:
        yield
    except PartFailed:
        raise
    except StackError as exc:
        raise PartFailed(part, log, str(exc)) from None
    except Exception as exc:
        raise PartFailed(part, log, f"{type(exc).__name__}: {exc}") from exc


def _launch(started: list[str], name: str, log: Path, part, start: Callable[[], object]) -> None:
    """`start()` spawns `part.proc` and waits until it answers. Its pid is recorded (run/pids and `started`) as
    soon as the process exists, so a part that never got ready is stopped all the same."""
    try:
        with _starting(name, log):
            start()
    finally:
        if part.proc is not None:
            _record(name, part.proc.pid)
            started.append(name)


def _port_taken(port: int) -> bool:
    """Whether something else holds 127.0.0.1:port; bound as the servers bind (SO_REUSEADDR: TIME-WAIT is no bar)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _check_ports(wanted: dict[str, tuple[str, int]]) -> None:
    """Refuse before starting anything when a port of a part to start is taken: otherwise that part fails late,
    or worse looks ready because whatever holds its port answers."""
    taken = [f"  {part}: 127.0.0.1:{port} (set {PORT_SETTINGS[field][0]} to move it)"
             for part, (field, port) in wanted.items() if _port_taken(port)]
    if taken:
        raise StackError("ports in use by another program (see `ss -ltnp`):\n" + "\n".join(taken))


def _env(pg: Postgres, redis: Redis, admin: str) -> dict[str, str]:
    return {
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis.url,
        "VT_ADMIN_TOKENS": admin,
        "VT_READER_TOKENS": os.environ.get("VT_READER_TOKENS", ""),
        "VT_BEAT_SCHEDULE_FILE": str(RUN / "beat-schedule"),
    }


def _start(started: list[str], name: str, part: str, env: dict, ready_port: int,
           ready_path: str = "/readyz") -> None:
    if _alive(name):
        say(f"{name} already running")
        return
    proc = Process(name, part, env, LOGS / f"{name}.log")
    _launch(started, name, proc.log, proc,
            lambda: (proc.start(RUN), proc.wait_http(ready_port, ready_path, timeout=60)))
    say(f"{name} started (pid {proc.pid}, log {proc.log})")


def up(args: argparse.Namespace) -> int:
    for d in (RUN, LOGS, PIDS):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(RUN, 0o755)
    ports = Ports()
    started: list[str] = []  # what this run started, in order: a failure part-way stops exactly these
    try:
        _up(ports, started)
    except BaseException as exc:
        print("interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {exc}", file=sys.stderr, flush=True)
        _undo(started, exc.part if isinstance(exc, PartFailed) else None)
        if isinstance(exc, StackError):
            return 1
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise
    return 0


def _undo(started: list[str], failed: str | None) -> None:
    """Stop what this run started, last first; what was running before it keeps running."""
    for name in reversed(started):
        if _stop(name):
            say(f"stopped {name}")
    left = [name for name in started if _running(name)]
    before = [name for name in _PARTS if name not in started and _running(name)]
    what = "it had started nothing"
    if started:
        what = f"it had started {', '.join(started)}: " + (f"could not stop {', '.join(left)}" if left else "all stopped")
    if before:
        what += f"; left running from an earlier `make up`: {', '.join(before)}"
    print(f"error: `make up` failed{f' at {failed}' if failed else ''}; {what}", file=sys.stderr, flush=True)


def _up(ports: Ports, started: list[str]) -> None:
    admin = _admin_token()
    data_dir = _postgres_data_dir()
    pg = Postgres(data_dir, ports.postgres, _postgres_log(data_dir))
    redis = Redis(RUN / "redis", ports.redis, LOGS / "redis.log")
    _check_ports({part: (field, getattr(ports, field)) for part, field in _PARTS.items()
                  if field and not _running(part) and (part != "ingestor" or INGESTOR_BINARY.exists())})
    if pg.running():
        say("Postgres already running")
    else:
        stale = pg.remove_stale_pid_file()
        if stale is not None:
            what = f"pid {stale} is no postmaster of this data directory" if stale else "unreadable"
            say(f"removed {pg.pid_file}, left by a crash ({what})")
        say(f"starting Postgres on 127.0.0.1:{ports.postgres}")
        started.append("postgres")  # before pg_ctl: it may leave a server behind though it failed
        with _starting("postgres", pg.log):
            pg.start()
    if _alive("redis"):
        say("Redis already running")
    else:
        say(f"starting Redis on 127.0.0.1:{ports.redis} (AOF everysec, noeviction)")
        _launch(started, "redis", redis.log, redis, redis.start)
    env = _env(pg, redis, admin)
    say("applying migrations")
    with _starting("migrate", LOGS / "migrate.log"):
        Process("migrate", "migrate", env, LOGS / "migrate.log").run_to_end(RUN)
    _start(started, "registry", "registry", {**env, "VT_HTTP_BIND": f"127.0.0.1:{ports.registry}"}, ports.registry)
    _start(started, "query", "query", {**env, "VT_HTTP_BIND": f"127.0.0.1:{ports.query}"}, ports.query)
    upstreams = {"registry": ports.registry, "query": ports.query}
    if INGESTOR_BINARY.exists():
        _start(started, "ingestor", "ingestor", {**env, "VT_LISTEN_ADDR": f"127.0.0.1:{ports.ingestor}",
                                                 "VT_MQTT_ADDR": f"127.0.0.1:{ports.mqtt}"}, ports.ingestor)
        upstreams["ingestor"] = ports.ingestor
    else:
        say(f"WARNING: {INGESTOR_BINARY} is not built; /api/ingest is off (run `make ingestor-build`)")
    # Worker and beat serve /metrics once started: that is their readiness.
    _start(started, "worker", "worker", {**env, "VT_METRICS_PORT": str(ports.worker_metrics)},
           ports.worker_metrics, "/metrics")
    _start(started, "beat", "beat", {**env, "VT_METRICS_PORT": str(ports.beat_metrics)}, ports.beat_metrics,
           "/metrics")
    _start_monitoring(ports, env, upstreams, started)
    if _alive("nginx"):
        say("nginx already running")
    else:
        nginx = Nginx(ports.http, upstreams, RUN / "nginx", LOGS)
        _launch(started, "nginx", LOGS / "nginx-error.log", nginx, nginx.start)
        say(f"nginx routing the ingress paths on 127.0.0.1:{ports.http}")
    base = f"http://127.0.0.1:{ports.http}"
    if os.environ.get("SIM", "1") != "0":
        sim_env = {"VT_URL": base, "VT_ADMIN_TOKEN": admin, "SIM_DEVICES": os.environ.get("SIM_DEVICES", "20"),
                   "SIM_STATE": str(RUN / "simulator.json"), "PYTHONPATH": str(ROOT),
                   "SIM_MQTT": f"127.0.0.1:{ports.mqtt}" if INGESTOR_BINARY.exists() else ""}
        if _alive("simulator"):
            say("simulator already running")
        else:
            with open(LOGS / "simulator.log", "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "stack.simulator"], env={**os.environ, **sim_env},
                                        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            _record("simulator", proc.pid)
            started.append("simulator")
            say(f"simulator feeding {sim_env['SIM_DEVICES']} devices (log {LOGS / 'simulator.log'})")
    _summary(base, admin, ports)


def _start_monitoring(ports: Ports, env: dict, upstreams: dict[str, int], started: list[str]) -> None:
    """The Redis and Postgres exporters, then Prometheus scraping every process with the chart's rules."""
    stream_key = os.environ.get("VT_STREAM_KEY", "vt:telemetry")
    for name, make in (
            ("redis-exporter", lambda: prom.redis_exporter(ports.redis_exporter, env["REDIS_URL"], stream_key,
                                                           LOGS / "redis-exporter.log")),
            ("postgres-exporter", lambda: prom.postgres_exporter(ports.postgres_exporter, env["DATABASE_URL"],
                                                                 LOGS / "postgres-exporter.log"))):
        if _alive(name):
            say(f"{name} already running")
            continue
        with _starting(name, LOGS / f"{name}.log"):
            daemon = make()
        _launch(started, name, daemon.log, daemon, daemon.start)
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
    log = LOGS / "prometheus.log"
    with _starting("prometheus", log):
        daemon = prom.prometheus(ports.prometheus, RUN / "prometheus", targets, log)
    _launch(started, "prometheus", log, daemon, lambda: prom.start_prometheus(daemon))
    say(f"Prometheus on {daemon.url} scraping {len(targets)} jobs with {prom.RULES.relative_to(ROOT)}")


def _summary(base: str, admin: str, ports: Ports) -> None:
    print(f"""
VisionTrack is up.
  API (ingress)   {base}
  MQTT            127.0.0.1:{ports.mqtt}   (user name: a device token; topic v1/devices/me/telemetry)
  Prometheus      http://127.0.0.1:{ports.prometheus}   (targets: /targets, alerts: /alerts)
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
    for name in reversed(_PARTS):
        if _stop(name):
            say(f"stopped {'Postgres' if name == 'postgres' else name}")
    return 0


def status(args: argparse.Namespace) -> int:
    """What runs, judged by each part's process (a file a crash left behind says nothing)."""
    for name in _PARTS:
        pid = _pid(name)
        print(f"{name:17} {'running (pid %d)' % pid if pid else 'stopped'}")
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
