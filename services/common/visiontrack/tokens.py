"""Device tokens and the Redis token index (docs/contracts.md section 2).

Two writers keep the index: the registry changes an entry inside the Postgres transaction that changes the
token (before its commit), and the aggregator now and then replaces the whole index with what Postgres
holds. The replacement must not put back what a registry change removed while it was being built (a
revoked token working again until the next one). So the registry holds INDEX_LOCK shared from its index
change to its commit, and the rebuild holds it exclusively from its read of Postgres to its swap in Redis:
it reads only committed changes, and none can slip in between.
"""
from __future__ import annotations

import hashlib
import secrets
import uuid

TOKEN_PREFIX = "vtd_"
INDEX_LOCK = 0x5654_544B  # "VTTK": a Postgres advisory lock id


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


def lock_index_for_change(cur) -> None:
    """In a transaction about to change index entries: wait out a rebuild in progress (shared, so registry
    changes never wait for each other)."""
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (INDEX_LOCK,))


def rebuild_index(cur, redis, key: str) -> int:
    """Replace the whole index atomically with the tokens Postgres holds; `cur` in a transaction, which
    keeps the lock until its commit (after the swap)."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (INDEX_LOCK,))
    cur.execute("""SELECT t.token_sha256, d.id, d.status
                   FROM device_tokens t JOIN devices d ON d.id = t.device_id""")
    tmp = f"{key}:rebuild:{uuid.uuid4().hex}"  # a rebuild of its own: never one half filled by another
    pipe = redis.pipeline(transaction=False)
    count = 0
    try:
        for sha, device_id, status in cur:
            pipe.hset(tmp, sha, index_value(device_id, status))
            count += 1
            if count % 1000 == 0:
                pipe.execute()
        if count:
            pipe.rename(tmp, key)
        else:
            pipe.delete(key)
        pipe.execute()
    finally:
        if count:
            redis.delete(tmp)  # only left behind when the swap failed
    return count
