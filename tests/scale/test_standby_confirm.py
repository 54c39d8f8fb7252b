"""VT_STANDBY_CONFIRM_SECONDS' wait, against a real primary and asynchronous standby: it returns once the
standby has flushed the last commit; refuses (the batch stays unacknowledged) while a streaming standby does
not; and does not wait once no standby streams at all."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psycopg2
import pytest

from aggregator.storage import StandbyBehind, TelemetryStorage
from stack.replicated import PostgresPair


@pytest.fixture
def pair(run_dir):
    pair = PostgresPair(run_dir / "pg-confirm", synchronous=False)
    pair.start()
    yield pair
    pair.stop()


def test_the_wait_ends_once_a_standby_has_the_commit_and_refuses_without_one(pair):
    conn = psycopg2.connect(pair.primary.url)
    storage = TelemetryStorage(conn, standby_confirm_seconds=1.5)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE confirm_probe (n int)")
            cur.execute("INSERT INTO confirm_probe SELECT generate_series(1, 10000)")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_insert_lsn()")
            committed = cur.fetchone()[0]
        conn.commit()
        storage.wait_for_standby()  # the standby streams: returns once it has flushed the commit
        with conn.cursor() as cur:
            cur.execute("SELECT flush_lsn >= %s::pg_lsn FROM pg_stat_replication", (committed,))
            assert cur.fetchone()[0], "returned before the standby flushed the commit"
        conn.commit()

        # Its WAL receiver stopped: still streaming as far as the primary knows, flushing nothing.
        stalled = _wal_receiver(pair.standby.pid())
        os.kill(stalled, signal.SIGSTOP)
        try:
            _commit_a_row(conn)
            started = time.monotonic()
            with pytest.raises(StandbyBehind):
                storage.wait_for_standby()
            assert time.monotonic() - started >= 1.5
        finally:
            os.kill(stalled, signal.SIGCONT)

        pair.standby.stop()
        _commit_a_row(conn)
        started = time.monotonic()
        storage.wait_for_standby()  # none streams: nothing to wait for
        assert time.monotonic() - started < 1.0
    finally:
        conn.close()


def _commit_a_row(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO confirm_probe VALUES (0)")
    conn.commit()


def _wal_receiver(postmaster: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"walreceiver" in f.read():
                return int(pid)
    raise AssertionError(f"no WAL receiver among the standby's processes {children}")
