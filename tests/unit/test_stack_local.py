"""`make up`'s ports and what a failed `make up` leaves behind (stack/local.py).

The failure tests run `up()` itself in a temporary run directory, with each part but nginx replaced by a
`sleep` process (real pids, pid files and process groups, nothing listening), and the real nginx failing to
bind a port taken after the port check: as Prometheus' port was once taken by an outgoing Redis connection.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stack import liveness, local, simulator
from stack import prometheus as prom
from stack.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _default_ports() -> dict[str, int]:
    return {**{var: default for var, default in local.PORT_SETTINGS.values()},
            "SIM_WEBHOOK_PORT": simulator.DEFAULT_WEBHOOK_PORT}


def test_every_port_of_the_local_stack_has_a_setting():
    assert list(local.PORT_SETTINGS) == [f.name for f in local.Ports.__dataclass_fields__.values()]
    ports = _default_ports()
    assert len(set(ports.values())) == len(ports), ports  # no two parts on one port
    assert local.PORT_SETTINGS["http"] == ("VT_HTTP_PORT", 8080)


def test_no_default_port_is_in_this_machines_ephemeral_range():
    """A port in the range can be the local end of any outgoing connection, and its server then cannot bind."""
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not path.exists():
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range (not Linux)")
    low, high = map(int, path.read_text().split())
    inside = {var: port for var, port in _default_ports().items() if low <= port <= high}
    assert not inside, f"default ports inside the ephemeral range {low}-{high}: {inside}"


def test_default_ports_are_below_every_usual_ephemeral_range():
    # Linux's default range starts at 32768 (a machine may have narrowed it), the IANA one (BSD, macOS) at 49152;
    # under 1024 a port needs root.
    outside = {var: port for var, port in _default_ports().items() if not 1024 <= port < 32768}
    assert not outside, outside


def test_the_environment_still_moves_each_port():
    overrides = {var: str(20000 + i) for i, (var, _) in enumerate(local.PORT_SETTINGS.values())}
    env = {**os.environ, **overrides, "PYTHONPATH": str(ROOT)}
    code = "import dataclasses, json; from stack.local import Ports; print(json.dumps(dataclasses.asdict(Ports())))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out) == {field: int(overrides[var]) for field, (var, _) in local.PORT_SETTINGS.items()}


# --- a failure part-way --------------------------------------------------------------------------------------

class _Fakes:
    """Stand-ins for the parts nginx comes after: each a `sleep` in its own session, as the real ones run."""

    def __init__(self, run: Path):
        self.run = run
        self.spawned: dict[str, subprocess.Popen] = {}
        self.after_prometheus = lambda: None

    def spawn(self, name: str) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
        self.spawned[name] = proc
        return proc

    def install(self, monkeypatch) -> None:
        fakes = self

        class Postgres:
            def __init__(self, data_dir, port, log):
                self.data_dir, self.port, self.log = Path(data_dir), port, log
                self.url = f"postgresql://fake@127.0.0.1:{port}/fake"

            @property
            def pid_file(self):
                return self.data_dir / "postmaster.pid"

            def pid(self):
                pid = int(self.pid_file.read_text()) if self.pid_file.exists() else None
                return pid if pid and liveness.exists(pid) else None

            def running(self):
                return self.pid() is not None

            def remove_stale_pid_file(self):
                return None

            def start(self):
                self.data_dir.mkdir(parents=True, exist_ok=True)
                (self.data_dir / "postmaster.pid").write_text(str(fakes.spawn("postgres").pid))

            def stop(self):
                pid_file = self.data_dir / "postmaster.pid"
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
                fakes.spawned["postgres"].wait(10)
                pid_file.unlink()

        class Redis:
            def __init__(self, data_dir, port, log):
                self.port, self.log, self.proc = port, log, None
                self.url = f"redis://127.0.0.1:{port}/0"

            def start(self):
                self.proc = fakes.spawn("redis")

        class Process:
            def __init__(self, name, part, env, log):
                self.name, self.log, self.proc = name, log, None

            def start(self, run_dir):
                self.proc = fakes.spawn(self.name)
                return self

            @property
            def pid(self):
                return self.proc.pid

            def wait_http(self, *args, **kwargs):
                pass

            def run_to_end(self, run_dir):
                pass

        class Daemon:
            def __init__(self, name, port, log):
                self.name, self.port, self.log, self.proc = name, port, log, None
                self.url = f"http://127.0.0.1:{port}"

            def start(self):
                self.proc = fakes.spawn(self.name)
                return self

            @property
            def pid(self):
                return self.proc.pid

        def start_prometheus(daemon):
            daemon.start()
            fakes.after_prometheus()
            return daemon

        monkeypatch.setattr(local, "RUN", self.run)
        monkeypatch.setattr(local, "LOGS", self.run / "logs")
        monkeypatch.setattr(local, "PIDS", self.run / "pids")
        monkeypatch.setattr(local, "_postgres_data_dir", lambda: self.run / "pg")
        monkeypatch.setattr(local, "Postgres", Postgres)
        monkeypatch.setattr(local, "Redis", Redis)
        monkeypatch.setattr(local, "Process", Process)
        monkeypatch.setattr(local, "INGESTOR_BINARY", Path(sys.executable))  # "built"
        monkeypatch.setattr(prom, "redis_exporter", lambda port, url, key, log: Daemon("redis-exporter", port, log))
        monkeypatch.setattr(prom, "postgres_exporter", lambda port, url, log: Daemon("postgres-exporter", port, log))
        monkeypatch.setattr(prom, "prometheus", lambda port, data, targets, log: Daemon("prometheus", port, log))
        monkeypatch.setattr(prom, "start_prometheus", start_prometheus)
        monkeypatch.setenv("SIM", "0")

    def running_before(self, name: str) -> subprocess.Popen:
        """A part an earlier `make up` started (here: its pid file, as `up` writes it)."""
        proc = self.spawn(name)
        (self.run / "pids").mkdir(parents=True, exist_ok=True)
        liveness.write_pid_file(self.run / "pids" / f"{name}.pid", proc.pid)
        return proc

    def stop_all(self) -> None:
        for proc in self.spawned.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    ports = local.Ports(**{field: free_port() for field in local.PORT_SETTINGS})
    monkeypatch.setattr(local, "Ports", lambda: ports)
    fakes = _Fakes(tmp_path / "run")
    fakes.ports = ports
    fakes.install(monkeypatch)
    yield fakes
    fakes.stop_all()


@pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()), reason="nginx not installed")
def test_a_failure_part_way_stops_what_this_run_started_and_nothing_else(fakes, capsys):
    earlier = {name: fakes.running_before(name) for name in ("redis", "worker")}
    blocker = socket.socket()  # bound, not listening: nginx cannot bind it, and nothing answers on it
    fakes.after_prometheus = lambda: blocker.bind(("127.0.0.1", fakes.ports.http))
    try:
        assert local.up(argparse.Namespace()) == 1
    finally:
        blocker.close()
    err = capsys.readouterr().err

    assert "error: nginx did not start: nginx exited with 1" in err
    assert "nginx-error.log ---" in err and "Address already in use" in err  # the end of nginx's log
    ours = ["postgres", "registry", "query", "ingestor", "beat", "redis-exporter", "postgres-exporter", "prometheus"]
    assert sorted(name for name in fakes.spawned if name not in earlier) == sorted(ours)
    for name in ours:
        assert fakes.spawned[name].poll() is not None, f"{name} left running"
        assert not (fakes.run / "pids" / f"{name}.pid").exists(), name
    assert not (fakes.run / "pg" / "postmaster.pid").exists()
    assert not (fakes.run / "pids" / "nginx.pid").exists()
    for name, proc in earlier.items():  # what was running before this `up` still is
        assert proc.poll() is None, f"{name} was stopped"
        assert liveness.read_pid_file(fakes.run / "pids" / f"{name}.pid").pid == proc.pid
    assert "error: `make up` failed at nginx; it had started postgres, registry," in err
    assert "all stopped; left running from an earlier `make up`: redis, worker" in err


def test_a_port_taken_before_the_start_fails_it_before_anything_starts(fakes, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", fakes.ports.prometheus))
        holder.listen()  # a listener: without the check, Prometheus would look ready through it
        assert local.up(argparse.Namespace()) == 1
    err = capsys.readouterr().err
    assert f"prometheus: 127.0.0.1:{fakes.ports.prometheus} (set VT_PROMETHEUS_PORT to move it)" in err
    assert fakes.spawned == {}
    assert "it had started nothing" in err
