"""Postgres access: a small thread-safe pool, created lazily so each forked process gets its own."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import psycopg2
import psycopg2.extras
import psycopg2.pool


class Database:
    def __init__(self, url: str, pool_size: int = 4, statement_timeout_ms: int | None = None,
                 application_name: str = "visiontrack"):
        self.url = url
        self.pool_size = pool_size
        options = f"-c statement_timeout={statement_timeout_ms}" if statement_timeout_ms else ""
        self._kwargs = {"options": options, "application_name": application_name}
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    # A pool inherited through fork shares sockets with the parent: never reuse it.
                    self._pool = psycopg2.pool.ThreadedConnectionPool(0, self.pool_size, self.url, **self._kwargs)
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
            pool.putconn(conn, close=broken or conn.closed != 0)

    def ping(self) -> bool:
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
            return True
        except psycopg2.Error:
            return False

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.closeall()
        self._pool = None
