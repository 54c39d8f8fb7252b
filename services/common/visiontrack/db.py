"""Postgres access: a small thread-safe pool, created lazily so each forked process gets its own."""
from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
from typing import Iterator

import psycopg2
import psycopg2.extensions
import psycopg2.extras


class ConnectionPool:
    """Up to `size` connections, opened on demand and kept open (psycopg2's own pools close every
    connection above `minconn` when it is returned, which costs a new connection per request)."""

    def __init__(self, size: int, connect):
        self._connect = connect
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    def getconn(self, timeout: float = 10.0):
        if not self._slots.acquire(timeout=timeout):
            raise psycopg2.OperationalError("no free database connection in the pool")
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            if not _hung_up(conn):
                return conn
            conn.close()  # the server ended it while it sat here (a restart): its first query would fail
        try:
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn, close: bool = False) -> None:
        if close or conn.closed:
            conn.close()
        else:
            self._idle.put(conn)
        self._slots.release()

    def closeall(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _hung_up(conn) -> bool:
    """Whether the server has ended an idle connection, without a round trip (about a microsecond): an idle
    connection has nothing to read unless the server sent its goodbye (a FATAL message, then end of file)."""
    if conn.closed:
        return True
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Database:
    def __init__(self, url: str, pool_size: int = 4, statement_timeout_ms: int | None = None,
                 application_name: str = "visiontrack"):
        self.url = url
        self.pool_size = pool_size
        options = f"-c statement_timeout={statement_timeout_ms}" if statement_timeout_ms else ""
        self._kwargs = {"options": options, "application_name": application_name}
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool:
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    # A pool inherited through fork shares sockets with the parent: never reuse it.
                    self._pool = ConnectionPool(self.pool_size, self.connect)
                    self._pid = os.getpid()
        return self._pool

    def connect(self):
        """A dedicated connection outside the pool (workers, migrations)."""
        return psycopg2.connect(self.url, **self._kwargs)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in one transaction: committed on success, rolled back on any error."""
        pool = self._get_pool()
        conn = pool.getconn()
        broken = False
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except psycopg2.Error:
                broken = True
            raise
        finally:
            pool.putconn(conn, close=broken)

    @contextlib.contextmanager
    def read(self) -> Iterator[psycopg2.extensions.cursor]:
        """A plain (tuple) cursor in autocommit mode for one read: no BEGIN and COMMIT round trips, which
        are most of the database time of a small API query. Each statement sees its own snapshot."""
        pool = self._get_pool()
        conn = pool.getconn()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                yield cur
        finally:
            if not conn.closed:  # a lost connection is closed by the pool instead
                conn.autocommit = False
            pool.putconn(conn)

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.closeall()
        self._pool = None
