"""The token index rebuild against registry changes (visiontrack.tokens).

A registry change writes the index before its Postgres commit; a rebuild fills a copy from a snapshot and
swaps it in. Each test puts a change where a careless rebuild would undo it: in flight (index written, not
yet committed) when the rebuild swaps, or committed after the rebuild's snapshot. The change must survive.
"""
from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace

import psycopg2
import pytest

from registry.device_store import DeviceStore
from visiontrack import tokens
from visiontrack.cluster_keys import companion
from visiontrack.db import Database
from visiontrack.tokens import (RebuildSkipped, changed_key, fill_scratch, index_value, lock_index_for_change,
                                rebuild_index, record_change, swap_in, token_sha256)

STALE = "0" * 64  # an entry no row backs: gone after any swap, so a test sees that one happened


@pytest.fixture
def index_key(redis_client):
    key = f"test:token-index:{uuid.uuid4().hex[:8]}"
    redis_client.hset(key, STALE, index_value(1, "active"))
    yield key
    redis_client.delete(key, changed_key(key))


@pytest.fixture
def connect(postgres):
    """Connections closed (rolled back) at the end whatever happens, so no test leaves the lock held."""
    opened = []

    def open_one():
        conn = psycopg2.connect(postgres.url)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.close()


def _sha() -> str:
    return token_sha256(f"vtd_{uuid.uuid4().hex}")


def _device_with_token(db, redis_client, key: str) -> tuple[int, str]:
    sha = _sha()
    with db.cursor() as cur:
        cur.execute("INSERT INTO devices (name) VALUES (%s) RETURNING id", (f"index-{uuid.uuid4().hex[:8]}",))
        device = cur.fetchone()[0]
        cur.execute("INSERT INTO device_tokens (device_id, token_sha256) VALUES (%s, %s)", (device, sha))
    redis_client.hset(key, sha, index_value(device, "active"))
    return device, sha


def _change(conn, redis_client, key: str, sql: str, params: tuple, set_: dict, removed: list[str]) -> None:
    """What the registry does up to its commit: the rows, the lock, the index entries and the change note."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        lock_index_for_change(cur)
    pipe = redis_client.pipeline(transaction=True)
    for sha, value in set_.items():
        pipe.hset(key, sha, value)
    for sha in removed:
        pipe.hdel(key, sha)
    record_change(pipe, key, *set_, *removed)
    pipe.execute()


class Rebuild(threading.Thread):
    """A rebuild on its own connection; its error, if any, is raised again by result()."""

    def __init__(self, conn, redis_client, key: str):
        super().__init__(daemon=True)
        self.conn, self.redis, self.key, self.error = conn, redis_client, key, None

    def run(self):
        try:
            with self.conn:
                rebuild_index(self.conn, self.redis, self.key)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def result(self, timeout: float = 10) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the rebuild did not finish"
        if self.error:
            raise self.error
        assert self.redis.hget(self.key, STALE) is None, "the rebuild swapped nothing in"


def _rebuild_across(changing, redis_client, key: str, connect) -> None:
    """A rebuild started while `changing` is in flight: it must wait at its swap until the change commits."""
    rebuild = Rebuild(connect(), redis_client, key)
    rebuild.start()
    rebuild.join(0.5)
    assert rebuild.is_alive(), "the rebuild swapped while a change was in flight"
    changing.commit()
    rebuild.result()


def test_a_revocation_in_flight_is_not_undone_by_a_rebuild(db, redis_client, index_key, connect):
    device, sha = _device_with_token(db, redis_client, index_key)
    revoking = connect()
    _change(revoking, redis_client, index_key, "DELETE FROM device_tokens WHERE device_id = %s", (device,),
            set_={}, removed=[sha])
    _rebuild_across(revoking, redis_client, index_key, connect)
    assert redis_client.hget(index_key, sha) is None  # the revoked token stays out


def test_a_rotation_in_flight_is_kept_by_a_rebuild(db, redis_client, index_key, connect):
    device, old = _device_with_token(db, redis_client, index_key)
    new = _sha()
    rotating = connect()
    _change(rotating, redis_client, index_key, "UPDATE device_tokens SET token_sha256 = %s WHERE device_id = %s",
            (new, device), set_={new: index_value(device, "active")}, removed=[old])
    _rebuild_across(rotating, redis_client, index_key, connect)
    assert redis_client.hget(index_key, new) == index_value(device, "active")
    assert redis_client.hget(index_key, old) is None


def test_a_change_committed_after_the_snapshot_is_applied_before_the_swap(db, redis_client, index_key, connect):
    device, sha = _device_with_token(db, redis_client, index_key)
    rebuilding = connect()
    scratch = fill_scratch(rebuilding, redis_client, index_key)  # the snapshot still holds the token
    assert redis_client.hget(scratch, sha) is not None
    revoking = connect()
    _change(revoking, redis_client, index_key, "DELETE FROM device_tokens WHERE device_id = %s", (device,),
            set_={}, removed=[sha])
    revoking.commit()
    with rebuilding:
        swap_in(rebuilding, redis_client, index_key, scratch)
    assert redis_client.hget(index_key, sha) is None
    assert redis_client.hget(index_key, STALE) is None


def test_a_registry_change_waits_only_for_the_swap_not_the_fill(db, redis_client, index_key, connect):
    device, sha = _device_with_token(db, redis_client, index_key)
    rebuilding = connect()
    fill_scratch(rebuilding, redis_client, index_key)  # the transaction is open, the lock not taken
    changing = connect()
    changing.cursor().execute("SET lock_timeout = '1s'")
    _change(changing, redis_client, index_key, "UPDATE devices SET status = 'disabled' WHERE id = %s", (device,),
            set_={sha: index_value(device, "disabled")}, removed=[])  # would time out if the fill held the lock
    changing.commit()
    rebuilding.rollback()


def test_a_rebuild_leaves_no_scratch_keys_and_no_expiry_on_the_index(db, redis_client, index_key, connect):
    _device_with_token(db, redis_client, index_key)
    rebuild = Rebuild(connect(), redis_client, index_key)
    rebuild.start()
    rebuild.result()
    assert redis_client.hlen(index_key) > 0 and redis_client.ttl(index_key) == -1
    assert list(redis_client.scan_iter(f"{index_key}:*")) == []


def test_a_second_rebuild_while_one_is_under_way_is_skipped(db, redis_client, index_key, connect):
    """Two swapping one after the other: the second, its snapshot older than the first's swap, would put back
    a change the first applied from the notes (and emptied them)."""
    device, sha = _device_with_token(db, redis_client, index_key)
    holding = connect()  # a change in flight keeps the first rebuild at its swap
    _change(holding, redis_client, index_key, "UPDATE devices SET status = 'disabled' WHERE id = %s", (device,),
            set_={sha: index_value(device, "disabled")}, removed=[])
    first = Rebuild(connect(), redis_client, index_key)
    first.start()
    first.join(0.5)
    assert first.is_alive()
    second = connect()
    with pytest.raises(RebuildSkipped, match="another rebuild"):
        with second:
            rebuild_index(second, redis_client, index_key)
    holding.commit()
    first.result()
    assert redis_client.hget(index_key, sha) == index_value(device, "disabled")


def test_a_fill_that_took_too_long_is_not_swapped_in(db, redis_client, index_key, connect, monkeypatch):
    """Notes expire after CHANGED_TTL_SECONDS: a fill that took over half of that may have missed a change
    whose note is gone, so its copy is dropped and the live index kept."""
    _device_with_token(db, redis_client, index_key)
    clock = iter([0.0, tokens.CHANGED_TTL_SECONDS / 2 + 1])
    monkeypatch.setattr(tokens, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    conn = connect()
    with pytest.raises(RebuildSkipped, match="took too long"):
        with conn:
            rebuild_index(conn, redis_client, index_key)
    assert redis_client.hget(index_key, STALE) is not None, "the copy was swapped in"
    assert list(redis_client.scan_iter(companion(index_key, "rebuild:*"))) == []
    monkeypatch.undo()
    later = Rebuild(connect(), redis_client, index_key)  # the rebuild lock went with the transaction
    later.start()
    later.result()


def test_a_rebuild_gives_up_on_a_change_holding_the_lock_too_long(db, redis_client, index_key, connect,
                                                                monkeypatch):
    """Registry changes must not wait behind a rebuild for long: past its lock timeout the rebuild skips
    this round, leaving the change in flight and the index as they were."""
    monkeypatch.setattr(tokens, "REBUILD_LOCK_TIMEOUT", "200ms")
    device, sha = _device_with_token(db, redis_client, index_key)
    holding = connect()
    _change(holding, redis_client, index_key, "UPDATE devices SET status = 'disabled' WHERE id = %s", (device,),
            set_={sha: index_value(device, "disabled")}, removed=[])
    conn = connect()
    with pytest.raises(RebuildSkipped, match="held the index lock too long"):
        with conn:
            rebuild_index(conn, redis_client, index_key)
    assert redis_client.hget(index_key, sha) == index_value(device, "disabled")
    assert redis_client.hget(index_key, STALE) is not None, "the copy was swapped in"
    assert list(redis_client.scan_iter(companion(index_key, "rebuild:*"))) == []
    holding.commit()


def test_every_registry_change_notes_its_hashes(postgres, redis_client, index_key):
    """Create, status change, rotation and delete each note the hashes they change, so a rebuild under way
    re-reads them."""
    store = DeviceStore(Database(postgres.url, pool_size=1), redis_client, index_key)
    device = store.create({"name": f"index-{uuid.uuid4().hex[:8]}", "type": None, "location": None, "metadata": {}})
    first = token_sha256(device["token"])

    def noted() -> set[str]:
        found = redis_client.smembers(changed_key(index_key))
        redis_client.delete(changed_key(index_key))
        return found

    assert noted() == {first}
    store.update(device["id"], {"status": "disabled"})
    assert noted() == {first}
    second = token_sha256(store.rotate_token(device["id"]))
    assert noted() == {first, second}
    store.delete(device["id"])
    assert noted() == {second}
