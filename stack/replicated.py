"""Redis Cluster and a Postgres primary with a standby, from the system's binaries, on free ports.

What `make test-scale` and the scale-out benchmark run VisionTrack on: the engines a user who outgrows one
Redis and one Postgres would already operate (docs/scale-out.md). Each node is a `servers.Redis` or
`servers.Postgres` with a few more settings; nothing here is VisionTrack's own.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .servers import Postgres, Redis, StackError, _as_postgres_user, _give_to_postgres, free_port, postgres_bindir

# A master silent this long is failed over to its replica: short, so a drill's failover takes seconds.
NODE_TIMEOUT_MS = 2000


def _cluster_port() -> int:
    """A free port for a cluster node whose bus port (10000 higher, 65535 at most) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port
    raise StackError("no free port with a free cluster bus port 10000 above it")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _redis_cli(port: int, *args: str, timeout: float = 10) -> str:
    done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
    return done.stdout


def _info_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


@dataclass
class RedisCluster:
    """`masters` masters, each with `replicas` replicas, slots spread evenly by `redis-cli --cluster create`."""
    base_dir: Path
    masters: int = 3
    replicas: int = 1
    nodes: list[Redis] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed node's URL: cluster-aware clients learn the others (and every later failover) from it."""
        return self.nodes[0].url.removesuffix("/0")

    def start(self, timeout: float = 60.0) -> None:
        for _ in range(self.masters * (1 + self.replicas)):
            port = _cluster_port()
            node = Redis(self.base_dir / f"node-{port}", port, self.base_dir / "logs" / f"redis-{port}.log",
                         options=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                                  # a replica cut off from its master still serves reads of what it has
                                  "--cluster-replica-validity-factor", "0"))
            node.start()
            self.nodes.append(node)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas",
                                  str(self.replicas), "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr}")
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every running node says the cluster is ok and the expected number of masters serve slots."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            states = [_info_field(_redis_cli(node.port, "cluster", "info"), "cluster_state")
                      for node in self.running_nodes()]
            if states and all(state == "ok" for state in states) and len(self.master_ports()) == self.masters:
                return
            last = ", ".join(states)
            time.sleep(0.2)
        raise StackError(f"Redis Cluster not healthy within {timeout:.0f}s (states: {last})")

    def running_nodes(self) -> list[Redis]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def master_ports(self) -> list[int]:
        """Ports of the masters that hold slots, as the running nodes see them."""
        for node in self.running_nodes():
            out = _redis_cli(node.port, "cluster", "nodes")
            if not out:
                continue
            ports = []
            for line in out.splitlines():
                parts = line.split()
                flags = parts[2].split(",")
                if "master" in flags and "fail" not in flags and len(parts) > 8:
                    ports.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
            return sorted(ports)
        return []

    def node_of_slot(self, slot: int) -> Redis:
        """The running master serving `slot`, by its own account (`cluster nodes`, its "myself" line)."""
        for node in self.running_nodes():
            myself = next((line.split() for line in _redis_cli(node.port, "cluster", "nodes").splitlines()
                           if "myself" in line), None)
            if not myself or "master" not in myself[2].split(","):
                continue
            for spec in myself[8:]:
                lo, _, hi = spec.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return node
        raise StackError(f"no running master serves slot {slot}")

    def kill_master_of_slot(self, slot: int) -> Redis:
        """SIGKILL the master serving `slot` (its replica takes over after NODE_TIMEOUT_MS); the killed node."""
        node = self.node_of_slot(slot)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        return node

    def wait_slot_served(self, slot: int, timeout: float = 30.0) -> Redis:
        """Until a running master serves `slot` (after a kill: its replica, promoted); that master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.node_of_slot(slot)
            except StackError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def rejoin(self, node: Redis, timeout: float = 30.0) -> None:
        """Start a killed node again: its nodes.conf brings it back, as a replica of the master that took over."""
        node.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _redis_cli(node.port, "info", "replication")
            if _info_field(info, "role") == "slave" and _info_field(info, "master_link_status") == "up":
                return
            time.sleep(0.2)
        raise StackError(f"Redis node {node.port} did not rejoin as a replica within {timeout:.0f}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class PostgresPair:
    """A primary and one hot standby streaming from it, synchronous (remote_apply: a commit returns once the
    standby can read it) unless `synchronous` is False."""
    base_dir: Path
    synchronous: bool = True
    fast_and_loose: bool = True
    primary: Postgres | None = None
    standby: Postgres | None = None

    STANDBY_NAME = "standby1"

    def start(self) -> None:
        replication = ("wal_level=replica", "max_wal_senders=10", "hot_standby=on",
                       "hot_standby_feedback=on", "wal_keep_size=1GB")
        # remote_apply on the command line (it outranks the tests' synchronous_commit=off); it waits for
        # nothing until synchronous_standby_names names a standby, set below once the standby streams.
        sync = ("synchronous_commit=remote_apply",) if self.synchronous else ()
        port = free_port()
        self.primary = Postgres(self.base_dir / "primary", port, self.base_dir / "logs" / "pg-primary.log",
                                fast_and_loose=self.fast_and_loose, options=replication + sync)
        self.primary.start()
        standby_dir = self.base_dir / "standby"
        standby_dir.mkdir(parents=True, exist_ok=True)
        _give_to_postgres(standby_dir)
        os.chmod(standby_dir, 0o700)
        conninfo = f"host=127.0.0.1 port={port} user={self.primary.user} application_name={self.STANDBY_NAME}"
        try:
            subprocess.run([*_as_postgres_user(), str(postgres_bindir() / "pg_basebackup"), "-D", str(standby_dir),
                            "-d", conninfo, "-X", "stream", "-R", "-c", "fast"],
                           check=True, capture_output=True, text=True, timeout=120)
        except subprocess.CalledProcessError as exc:
            raise StackError(f"pg_basebackup failed: {exc.stderr.strip()}") from None
        self.standby = Postgres(standby_dir, free_port(), self.base_dir / "logs" / "pg-standby.log",
                                fast_and_loose=self.fast_and_loose, options=replication)
        self.standby.start()
        if self.synchronous:
            # ALTER SYSTEM after the base backup, so the standby's copy of postgresql.auto.conf lacks it: once
            # promoted, it must not wait on every commit for a standby of its own.
            self._primary_sql(f"ALTER SYSTEM SET synchronous_standby_names = '{self.STANDBY_NAME}'",
                              "SELECT pg_reload_conf()")
        self.wait_streaming()

    def _primary_sql(self, *statements: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.primary.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def wait_streaming(self, timeout: float = 30.0) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg2.connect(self.primary.url) as conn, conn.cursor() as cur:
                cur.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                            (self.STANDBY_NAME,))
                row = cur.fetchone()
            conn.close()
            if row and row[0] == ("sync" if self.synchronous else "async"):
                return
            time.sleep(0.1)
        raise StackError(f"the standby did not start streaming within {timeout:.0f}s")

    @property
    def write_url(self) -> str:
        """Both servers, the writable one chosen at each connect (libpq's target_session_attrs): after a
        promotion, clients reconnect to the new primary with no change of settings."""
        return (f"postgresql://{self.primary.user}@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/"
                f"{self.primary.database}?target_session_attrs=read-write&connect_timeout=2")

    @property
    def read_url(self) -> str:
        return self.standby.url

    def promote_standby(self, kill_primary: bool = True) -> None:
        """Fail over: SIGKILL the primary's postmaster (as a crash would) and promote the standby."""
        if kill_primary:
            pid = self.primary.pid()
            if pid:
                os.killpg(pid, signal.SIGKILL) if _is_group_leader(pid) else os.kill(pid, signal.SIGKILL)
        subprocess.run([*_as_postgres_user(), str(postgres_bindir() / "pg_ctl"), "-D", str(self.standby.data_dir),
                        "-w", "promote"], check=True, capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            if server is not None:
                server.stop()


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
