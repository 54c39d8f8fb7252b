"""The services' Postgres pool against the real server: a pooled connection the server ended while it sat
idle (a Postgres restart, an administrator's pg_terminate_backend) is replaced before use, so the first
request after a database outage is not answered 503 for a connection that was already gone."""
from __future__ import annotations

import time

from visiontrack.db import Database


def _backend_pid(database: Database) -> int:
    with database.transaction() as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        return cur.fetchone()["pid"]


def test_a_connection_ended_by_the_server_while_idle_is_replaced_before_use(postgres, db):
    database = Database(postgres.url, pool_size=1)
    first = _backend_pid(database)
    with db.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (first,))
    time.sleep(0.2)  # the goodbye reaches the pooled socket
    second = _backend_pid(database)  # would raise OperationalError on the dead connection
    assert second != first
    assert _backend_pid(database) == second, "a live connection is kept, not replaced"
