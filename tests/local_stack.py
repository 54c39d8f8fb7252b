"""`make up`'s own code path (`python -m stack.local up|status|down`) run in a directory of its own, on ports of
its own, for tests that crash its parts and bring them back: the crash-recovery tests and the drills.

Each command runs as `make up` runs it, in a process of its own, so the parts it starts are nobody's
children here: a part killed is gone as after a real crash, not a zombie this process holds. Its ports
are below the ephemeral range (see PORT_SETTINGS in stack/local.py): a part restarted on its port must not
find it taken by some outgoing connection meanwhile.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stack import liveness
from stack.local import PORT_SETTINGS
from stack.servers import scratch_dir

ROOT = Path(__file__).resolve().parent.parent
# Every part `make up` starts, in its order (stack/local.py _PARTS).
PARTS = ("postgres", "redis", "registry", "query", "ingestor", "worker", "beat", "redis-exporter",
         "postgres-exporter", "prometheus", "nginx", "simulator")


def free_ports(count: int, low: int = 20000, high: int = 32000) -> list[int]:
    """`count` distinct ports of 127.0.0.1 free now, between `low` and `high` (below the ephemeral range)."""
    found: list[int] = []
    for port in random.sample(range(low, high), high - low):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports between {low} and {high}")


class LocalStack:
    """One local stack: its run directory, ports, tokens and settings (passed to every part it starts)."""

    def __init__(self, prefix: str, admin_token: str, reader_token: str, simulator: bool = False,
                 **settings: str):
        self.run_dir = scratch_dir(prefix)
        variables = [var for var, _ in PORT_SETTINGS.values()] + ["SIM_WEBHOOK_PORT"]
        self.ports = dict(zip(variables, free_ports(len(variables))))
        self.admin_token, self.reader_token = admin_token, reader_token
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()}, "VT_RUN_DIR": str(self.run_dir),
                    "VT_ADMIN_TOKEN": admin_token, "VT_READER_TOKENS": reader_token,
                    "SIM": "1" if simulator else "0", "SIM_DEVICES": "2",
                    "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))), **settings}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['VT_HTTP_PORT']}"

    @property
    def database_url(self) -> str:
        return f"postgresql://visiontrack@127.0.0.1:{self.ports['VT_PG_PORT']}/visiontrack"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['VT_REDIS_PORT']}/0"

    def command(self, name: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stack.local", name], env=self.env, cwd=ROOT, text=True,
                              capture_output=True, timeout=timeout)

    def up(self) -> str:
        """`make up`; its output. Fails with that output if it fails."""
        done = self.command("up")
        if done.returncode != 0:
            raise AssertionError(f"`make up` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def down(self) -> None:
        self.command("down", timeout=120)
        for pid in self.status().values():  # whatever `down` left must not outlive the tests
            if pid:
                _kill_group(pid)

    def status(self) -> dict[str, int | None]:
        """`make status`: part -> pid, None for a part it says is stopped."""
        done = self.command("status", timeout=60)
        assert done.returncode == 0, done.stderr
        found: dict[str, int | None] = {}
        for line in done.stdout.splitlines():
            name, _, state = line.partition(" ")
            state = state.strip()
            found[name] = int(state.split("pid ")[1].rstrip(")")) if state.startswith("running") else None
        return found

    def recorded_pid(self, part: str) -> int | None:
        """The pid a part's file names, read here without the code under test: postmaster.pid's first line,
        or run/pids/<part>.pid."""
        path = self.pid_file(part)
        try:
            text = path.read_text()
        except OSError:
            return None
        if part == "postgres":
            first = text.split("\n", 1)[0]
            return int(first) if first.isdigit() else None
        identity = liveness.ProcessIdentity.parse(text)
        return identity.pid if identity else None

    def pid_file(self, part: str) -> Path:
        return self.run_dir / "pg" / "postmaster.pid" if part == "postgres" else self.run_dir / "pids" / f"{part}.pid"

    def kill(self, part: str) -> int:
        """SIGKILL a part's whole process group (Postgres: the postmaster and every backend), as the OOM killer
        or a power cut would end it, and wait until none of it is left; its pid."""
        pid = self.recorded_pid(part)
        assert pid and liveness.exists(pid), f"{part} is not running (pid file {self.pid_file(part)})"
        _kill_group(pid)
        return pid


def _kill_group(pid: int, timeout: float = 20) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while liveness.group_members(pid):
        assert time.monotonic() < deadline, f"process group {pid} still has {liveness.group_members(pid)}"
        time.sleep(0.02)
