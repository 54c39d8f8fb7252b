"""Readiness: whether the servers a Python part depends on answer, as its /readyz reports it.

Each check opens its own connection, bounded by a short timeout, and closes it: a server that accepts and
then hangs cannot hold a probe past the orchestrator's timeout, and a pool's state does not hide an outage.
Postgres must also hold every migration this image ships, so a part is never ready before its schema.
Concurrent probes share one check, and a result is reused for a second. Failures and recoveries are logged
once, when the state changes.
"""
from __future__ import annotations

import logging
import select
import threading
import time
from typing import Callable, Collection, Iterable, Mapping

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import config as config_module
from . import migrate
from .redis_client import connect

log = logging.getLogger("visiontrack.readiness")

CHECK_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = 5


class NotReady(Exception):
    """A dependency answers but cannot serve this part yet; the message says why, as /readyz shows it."""


def not_ready_message(failing: Iterable[str]) -> str:
    """What /readyz says in its 503, in every part, from what Readiness found wrong."""
    return f"not ready: {', '.join(failing)}"


def postgres_answers(url: str, part: str, timeout: float = CHECK_TIMEOUT_SECONDS,
                     migrations: Collection[int] = ()) -> None:
    """Connect and run one query within `timeout` seconds in all (asynchronous libpq, so a server that
    accepts and then hangs cannot hold the check); raise when Postgres does not answer, NotReady when it
    lacks any of the `migrations` (versions)."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(url, async_=True, application_name=f"visiontrack-{part}-readyz")
    try:
        _wait(conn, deadline)
        cur = conn.cursor()
        try:
            cur.execute("SELECT version FROM schema_migrations")
            _wait(conn, deadline)
            applied = {row[0] for row in cur.fetchall()}
        except psycopg2.errors.UndefinedTable:
            applied = set()  # never migrated
    finally:
        conn.close()
    lacking = sorted(set(migrations) - applied)
    if lacking:
        raise NotReady(f"postgres schema lacks migrations {', '.join(f'{v:04d}' for v in lacking)}")


def _wait(conn, deadline: float) -> None:
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer in time")
        fd = conn.fileno()
        reading = state == psycopg2.extensions.POLL_READ
        select.select([fd] if reading else [], [] if reading else [fd], [], remaining)


def redis_answers(url: str, timeout: float = CHECK_TIMEOUT_SECONDS, cluster: bool = False) -> None:
    """PING on a fresh connection, no retries; raise when Redis does not answer. A cluster client first
    learns the slots from the node `url` names and refuses a cluster that leaves any slot unserved."""
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    if not cluster:
        options["single_connection_client"] = True
    client = connect(url, cluster, **options)
    try:
        client.ping()
    finally:
        client.close()


def dependency_checks(config, part: str, dependencies: Iterable[str]) -> dict[str, Callable[[], None]]:
    """The checks of the named dependencies ("postgres": with this image's schema; "postgres-read": the
    query service's read server answers, however far it lags; "redis"; "broker": Celery's) from the
    process's settings."""
    dependencies = list(dependencies)
    versions = [m.version for m in migrate.available()] if "postgres" in dependencies else []
    cluster = getattr(config, "redis_cluster", False)
    known = {"postgres": lambda: postgres_answers(config.database_url, part, migrations=versions),
             "postgres-read": lambda: postgres_answers(config_module.read_database_url(config), part),
             "redis": lambda: redis_answers(config.redis_url, cluster=cluster),
             "broker": lambda: redis_answers(config_module.broker_url(config))}
    return {name: known[name] for name in dependencies}


class Readiness:
    """Calls every check; returns what is wrong, one phrase per failed check ("redis unreachable", or a
    NotReady's message). One check runs at a time and its result serves the probes that arrive within
    `max_age` seconds."""

    def __init__(self, checks: Mapping[str, Callable[[], None]], max_age: float = 1.0):
        self.checks = dict(checks)
        self.max_age = max_age
        self._lock = threading.Lock()
        self._failing: list[str] | None = None
        self._at = 0.0

    def __call__(self) -> list[str]:
        with self._lock:
            if self._failing is not None and time.monotonic() - self._at < self.max_age:
                return list(self._failing)
            failing, reasons = [], []
            for name, check in self.checks.items():
                try:
                    check()
                except NotReady as exc:
                    failing.append(str(exc))
                    reasons.append(str(exc))
                except Exception as exc:  # any other failure means "unreachable"; the reason goes to the log
                    failing.append(f"{name} unreachable")
                    reasons.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            if failing and failing != self._failing:
                log.warning("not ready: %s", "; ".join(reasons))
            elif not failing and self._failing:
                log.info("ready again: %s answer", ", ".join(self.checks))
            self._failing, self._at = failing, time.monotonic()
            return list(failing)
