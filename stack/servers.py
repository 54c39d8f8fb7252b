"""Postgres and Redis from the system's binaries, with their data in a folder of ours.

Used by `make up` (data under run/) and by the tests (data in a temporary folder, free ports).
Postgres refuses to run as root, so as root it runs as the `postgres` user.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import liveness


class StackError(RuntimeError):
    pass


def scratch_dir(prefix: str) -> Path:
    """A temporary folder Postgres' own user can reach, removed when the process exits.

    Set VT_KEEP_RUN=1 to keep it (its logs/ explain a failed run); benchmark data runs to gigabytes.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    if not os.environ.get("VT_KEEP_RUN"):
        atexit.register(shutil.rmtree, path, True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, what: str = "server", proc: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with {proc.returncode}{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{what} did not listen on port {port} within {timeout:.0f}s{_tail(log)}")


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- last lines of " + str(log) + " ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def terminate(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM a child still running, wait up to `grace` seconds for it, then SIGKILL it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def postgres_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise StackError("Postgres server binaries not found (apt-get install postgresql)")
    return Path(found[-1]).parent


def _as_postgres_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")  # KeyError here means the postgresql package is missing
    return ["runuser", "-u", "postgres", "--"]


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


@dataclass
class Postgres:
    data_dir: Path
    port: int
    log: Path
    fast_and_loose: bool = False  # tests: no fsync; `make up` keeps Postgres' durable defaults
    options: tuple[str, ...] = ()  # more `-c name=value` server settings (replication, say)
    user: str = "visiontrack"
    database: str = "visiontrack"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*_as_postgres_user(), *args], check=True, capture_output=True, text=True)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _give_to_postgres(self.data_dir)
        os.chmod(self.data_dir, 0o700)
        bindir = postgres_bindir()
        try:
            self._run(str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user, "-A", "trust",
                      "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C", "--no-instructions")
        except subprocess.CalledProcessError as exc:
            raise StackError(f"initdb failed: {exc.stderr.strip()}") from None

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        self.remove_stale_pid_file()
        bindir = postgres_bindir()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        _give_to_postgres(self.log)
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.data_dir}",
                   "-c max_connections=200", "-c shared_buffers=256MB", "-c max_wal_size=4GB",
                   "-c checkpoint_timeout=15min"]
        if self.fast_and_loose:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options += [f"-c {option}" for option in self.options]
        try:
            self._run(str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log), "-w",
                      "-t", str(int(timeout)), "-o", " ".join(options), "start")
        except subprocess.CalledProcessError as exc:
            raise StackError(f"Postgres did not start: {exc.stderr.strip()}{_tail(self.log)}") from None
        self._create_database()

    def _create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def pid(self) -> int | None:
        """The postmaster's pid while it runs on this data directory. postmaster.pid alone proves nothing: it
        outlives a SIGKILL, and its pid may be another process's by now (or a zombie's, which Postgres itself
        takes for a live postmaster and refuses to start beside)."""
        try:
            pid = int(self.pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        argv = liveness.command_line(pid)
        if not argv or Path(argv[0]).name != "postgres" or "-D" not in argv[:-1]:
            return None
        data_dir = Path(argv[argv.index("-D") + 1])
        return pid if data_dir.resolve() == self.data_dir.resolve() else None

    def running(self) -> bool:
        return self.pid() is not None

    def remove_stale_pid_file(self) -> int | None:
        """Remove the lock files of a postmaster that no longer runs: postmaster.pid and its Unix socket's lock
        (the socket lives in the data directory, -k), each naming its pid. Postgres would refuse to start
        beside them if that pid is any process's now, a zombie's included. Returns the pid postmaster.pid
        named (0 if unreadable), None if there was nothing stale."""
        if not self.pid_file.exists() or self.running():
            return None
        try:
            stale = int(self.pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            stale = 0
        if stale > 0 and not liveness.exists(stale):
            # A postmaster killed alone leaves its backends for a moment, in its process group (pg_ctl makes it
            # a session leader; its pid stays reserved while the group lives). A new postmaster must not
            # recover the data directory while one of them may still write to it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(stale, signal.SIGKILL)
            if not liveness.wait_group_gone(stale, 10):
                raise StackError(f"processes of the crashed postmaster {stale} are still running: "
                                 f"{liveness.group_members(stale)}")
        for socket_lock in self.data_dir.glob(".s.PGSQL.*.lock"):
            socket_lock.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)
        return stale

    def stop(self) -> None:
        if not self.running():
            return
        subprocess.run([*_as_postgres_user(), str(postgres_bindir() / "pg_ctl"), "-D", str(self.data_dir),
                        "-m", "fast", "-w", "stop"], capture_output=True)


def _has_c_utf8() -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower()
    return "c.utf8" in out or "c.utf-8" in out


@dataclass
class Redis:
    data_dir: Path
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    options: tuple[str, ...] = ()  # more command-line settings (cluster mode, say)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if not binary:
            raise StackError("redis-server not found (apt-get install redis-server)")
        # AOF every second: an accepted reading survives a crash of Redis (at most ~1 s of exposure);
        # noeviction: a full Redis refuses writes (writers answer 503) instead of dropping the stream.
        # aof-load-truncated (Redis' default, spelt out): an AOF whose last command a crash cut in half loads
        # without that command (it was never acknowledged) instead of keeping Redis down.
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", "everysec", "--aof-load-truncated", "yes",
                "--maxmemory-policy", "noeviction",
                "--save", "", "--daemonize", "no", "--logfile", str(self.log), *self.options]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for_port(self.port, what="redis-server", proc=self.proc, log=self.log)

    def stop(self) -> None:
        terminate(self.proc, grace=10)
