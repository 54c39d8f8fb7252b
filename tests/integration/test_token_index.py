"""The token index rebuild against registry changes in flight (visiontrack.tokens).

A registry change writes the index before its Postgres commit. A rebuild that read Postgres before that
commit and swapped its copy in after the index write would undo the change: a revoked token working again,
or a new one refused, until the next rebuild. Here a change is held open at exactly that point, with a
rebuild started beside it; the rebuild must wait for the commit and so include the change.
"""
from __future__ import annotations

import threading
import uuid

import psycopg2
import pytest

from visiontrack.tokens import index_value, lock_index_for_change, rebuild_index, token_sha256


@pytest.fixture
def index_key(redis_client):
    key = f"test:token-index:{uuid.uuid4().hex[:8]}"
    yield key
    redis_client.delete(key)


def _device_with_token(db) -> tuple[int, str]:
    sha = token_sha256(f"vtd_{uuid.uuid4().hex}")
    with db.cursor() as cur:
        cur.execute("INSERT INTO devices (name) VALUES (%s) RETURNING id", (f"index-{uuid.uuid4().hex[:8]}",))
        device = cur.fetchone()[0]
        cur.execute("INSERT INTO device_tokens (device_id, token_sha256) VALUES (%s, %s)", (device, sha))
    return device, sha


def _rebuild_in_background(postgres, redis_client, key: str) -> threading.Thread:
    def rebuild():
        conn = psycopg2.connect(postgres.url)
        try:
            with conn, conn.cursor() as cur:
                rebuild_index(cur, redis_client, key)
        finally:
            conn.close()

    thread = threading.Thread(target=rebuild, daemon=True)
    thread.start()
    return thread


def _change_in_flight(postgres, sql: str, params: tuple, redis_change) -> psycopg2.extensions.connection:
    """A registry-like change, done up to its commit: the row changed, the lock held, the index written."""
    conn = psycopg2.connect(postgres.url)
    cur = conn.cursor()
    cur.execute(sql, params)
    lock_index_for_change(cur)
    redis_change()
    return conn


def test_a_revocation_in_flight_is_not_undone_by_a_rebuild(db, postgres, redis_client, index_key):
    device, sha = _device_with_token(db)
    redis_client.hset(index_key, sha, index_value(device, "active"))
    revoking = _change_in_flight(postgres, "DELETE FROM device_tokens WHERE device_id = %s", (device,),
                                 lambda: redis_client.hdel(index_key, sha))
    rebuild = _rebuild_in_background(postgres, redis_client, index_key)
    rebuild.join(0.5)
    assert rebuild.is_alive(), "the rebuild did not wait for the change in flight"
    revoking.commit()
    revoking.close()
    rebuild.join(10)
    assert not rebuild.is_alive()
    assert redis_client.hget(index_key, sha) is None  # the revoked token stays out


def test_a_new_token_in_flight_is_kept_by_a_rebuild(db, postgres, redis_client, index_key):
    device, old = _device_with_token(db)
    new = token_sha256(f"vtd_{uuid.uuid4().hex}")
    rotating = _change_in_flight(postgres, "UPDATE device_tokens SET token_sha256 = %s WHERE device_id = %s",
                                 (new, device), lambda: (redis_client.hdel(index_key, old),
                                                         redis_client.hset(index_key, new, index_value(device, "active"))))
    rebuild = _rebuild_in_background(postgres, redis_client, index_key)
    rebuild.join(0.5)
    rotating.commit()
    rotating.close()
    rebuild.join(10)
    assert redis_client.hget(index_key, new) == index_value(device, "active")
    assert redis_client.hget(index_key, old) is None


def test_a_rebuild_leaves_no_scratch_keys(db, postgres, redis_client, index_key):
    _device_with_token(db)
    rebuild = _rebuild_in_background(postgres, redis_client, index_key)
    rebuild.join(10)
    assert redis_client.hlen(index_key) > 0
    assert list(redis_client.scan_iter(f"{index_key}:*")) == []
