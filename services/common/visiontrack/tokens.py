"""Device tokens and the Redis token index (docs/contracts.md section 2)."""
from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "vtd_"


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


def rebuild_index(redis, key: str, rows) -> int:
    """Replace the whole index atomically with `rows` of (sha256 hex, device id, status)."""
    tmp = f"{key}:rebuild"
    pipe = redis.pipeline(transaction=False)
    pipe.delete(tmp)
    count = 0
    for sha, device_id, status in rows:
        pipe.hset(tmp, sha, index_value(device_id, status))
        count += 1
        if count % 1000 == 0:
            pipe.execute()
    if count:
        pipe.rename(tmp, key)
    else:
        pipe.delete(key)
    pipe.execute()
    return count
