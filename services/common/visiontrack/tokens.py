"""Device tokens and the Redis token index (docs/contracts.md section 2).

The registry changes entries inside the Postgres transaction that changes the token (`lock_index_for_change`,
`record_change`); the aggregator replaces the whole index from Postgres now and then (`rebuild_index`)
without undoing a change made meanwhile: see docs/design.md, "Device authentication and the token index".
"""
from __future__ import annotations

import hashlib
import secrets
import time
import uuid

import psycopg2.errors

from .cluster_keys import companion

TOKEN_PREFIX = "vtd_"
INDEX_LOCK = 0x5654_544B  # "VTTK": a Postgres advisory lock id
REBUILD_LOCK = 0x5654_5442  # "VTTB": held by the one rebuild under way
# How long a change stays noted. A rebuild trusts the notes only if its fill took under half of this (the
# task's time limit keeps it far shorter anyway).
CHANGED_TTL_SECONDS = 600
SCRATCH_TTL_SECONDS = 300  # past the task's hard time limit: a copy left by a killed rebuild goes by itself
REBUILD_LOCK_TIMEOUT = "5s"  # past it the rebuild gives up this round rather than hold registry changes


def new_device_token() -> str:
    """256 random bits; shown to the caller once, stored only as its SHA-256."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def index_value(device_id: int, status: str) -> str:
    return f"{device_id}:{status}"


def parse_index_value(raw: str | bytes | None) -> tuple[int, str] | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    device, _, status = text.partition(":")
    try:
        return int(device), status or "active"
    except ValueError:
        return None


# The helper keys below share the index's Redis Cluster slot (visiontrack.cluster_keys): the swap's RENAME
# and MULTI, and the registry's MULTI with record_change, each touch the index and one of them.
def changed_key(key: str) -> str:
    """The set of token hashes changed while a rebuild may be under way."""
    return companion(key, "changed")


def scratch_key(key: str) -> str:
    """A rebuild's own scratch copy of the index: a failed rebuild's leftovers never mix in."""
    return companion(key, f"rebuild:{uuid.uuid4().hex}")


def record_change(pipe, key: str, *shas: str) -> None:
    """In the MULTI that changes these index entries: note them for a rebuild in progress."""
    pipe.sadd(changed_key(key), *shas)
    pipe.expire(changed_key(key), CHANGED_TTL_SECONDS)


def lock_index_for_change(cur) -> None:
    """In a transaction about to change index entries: wait out a rebuild's swap in progress (shared, so
    registry changes never wait for each other)."""
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (INDEX_LOCK,))


_TOKENS = "SELECT t.token_sha256, d.id, d.status FROM device_tokens t JOIN devices d ON d.id = t.device_id"


class RebuildSkipped(Exception):
    """A rebuild that could not finish safely this round; the next one tries again."""


def rebuild_index(conn, redis, key: str) -> int:
    """Replace the whole index with the tokens Postgres holds; return how many it holds. `conn` is in a
    transaction that has run nothing yet; its commit (after the swap) releases the locks."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")  # the re-read must see later commits
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (REBUILD_LOCK,))
        if not cur.fetchone()[0]:
            raise RebuildSkipped("another rebuild is under way")
    started = time.monotonic()
    scratch = fill_scratch(conn, redis, key)
    if time.monotonic() - started > CHANGED_TTL_SECONDS / 2:
        redis.delete(scratch)
        raise RebuildSkipped("the fill took too long for the changes noted meanwhile to be trusted")
    try:
        return swap_in(conn, redis, key, scratch)
    except psycopg2.errors.LockNotAvailable:
        raise RebuildSkipped("a registry change held the index lock too long") from None


def fill_scratch(conn, redis, key: str) -> str:
    """A scratch copy of the index from a snapshot of Postgres, made without the lock; its key."""
    scratch = scratch_key(key)
    try:
        with conn.cursor(name=f"token_index_{uuid.uuid4().hex[:8]}") as rows:  # streamed, not all in memory
            rows.itersize = 5000
            rows.execute(_TOKENS)
            pipe = redis.pipeline(transaction=False)
            for n, (sha, device_id, status) in enumerate(rows, 1):
                pipe.hset(scratch, sha, index_value(device_id, status))
                if n % 1000 == 0:
                    pipe.expire(scratch, SCRATCH_TTL_SECONDS)
                    pipe.execute()
            pipe.expire(scratch, SCRATCH_TTL_SECONDS)
            pipe.execute()
    except BaseException:
        redis.delete(scratch)
        raise
    return scratch


def swap_in(conn, redis, key: str, scratch: str) -> int:
    """Under the lock: bring the copy up to date with the changes noted since the snapshot, then make it the
    index. Raises psycopg2.errors.LockNotAvailable when a registry change holds the lock too long."""
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (REBUILD_LOCK_TIMEOUT,))
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (INDEX_LOCK,))
            cur.execute("SET LOCAL lock_timeout = DEFAULT")
            changed = [m.decode() if isinstance(m, bytes) else m for m in redis.smembers(changed_key(key))]
            if changed:
                cur.execute(_TOKENS + " WHERE t.token_sha256 = ANY(%s)", (changed,))
                now = {sha: index_value(device_id, status) for sha, device_id, status in cur.fetchall()}
                pipe = redis.pipeline(transaction=False)
                for sha in changed:
                    if sha in now:
                        pipe.hset(scratch, sha, now[sha])
                    else:
                        pipe.hdel(scratch, sha)
                pipe.execute()
        count = redis.hlen(scratch)
        pipe = redis.pipeline(transaction=True)
        if count:
            # Not pipe.rename(): redis-py's cluster pipelines refuse it, as its keys could span slots; these
            # two share one (changed_key, scratch_key). PERSIST: RENAME carries the scratch copy's expiry over.
            pipe.execute_command("RENAME", scratch, key)
            pipe.persist(key)
        else:
            pipe.delete(key)
        pipe.delete(changed_key(key))  # no change can be noted before the commit releases the lock
        pipe.execute()
        return count
    finally:
        redis.delete(scratch)  # gone with the swap; left only when it failed
