"""The drills' stack: `make up`'s code path (tests/local_stack.py) with settings that keep the drills short, and
what the drills read of it directly (the stream's backlog and memory, Postgres' rows)."""
from __future__ import annotations

import contextlib

import psycopg2
import redis

from tests.local_stack import LocalStack

ADMIN_TOKEN = "drill-admin-token-0123456789"
READER_TOKEN = "drill-reader-token-0123456789"
# Entries (one per accepted request) the stream may hold unstored before writers answer 503. Above what a
# kill drill's load piles up while the worker is gone (~150 requests/s for ~10 s), below what the Postgres
# drill's load piles up in its 60 s (100 requests/s).
HIGH_WATER = 2500
STREAM_KEY = "vt:telemetry"
GROUP = "aggregators"

SETTINGS = {
    "VT_STREAM_HIGH_WATER": str(HIGH_WATER),
    "VT_ALERT_EVAL_SECONDS": "1",
    "VT_DRAIN_INTERVAL_SECONDS": "0.5",
    "VT_TRIM_INTERVAL_SECONDS": "1",
    "VT_WEBHOOK_BACKOFF_SECONDS": "1",
    # Entries a drain had read when Redis went down stay pending with it, its consumer alive: they are stored
    # once claimed, after this idle time (30 s by default).
    "VT_CLAIM_IDLE_MS": "5000",
}


def start() -> LocalStack:
    stack = LocalStack("vt-drills-", ADMIN_TOKEN, READER_TOKEN, **SETTINGS)
    try:
        stack.up()
    except BaseException:
        stack.down()
        raise
    return stack


def redis_client(stack: LocalStack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)


def backlog(client: redis.Redis) -> int:
    """Entries of the stream the aggregators have not stored yet (lag + pending of their group), as the
    writers count it for their high-water mark."""
    for group in client.xinfo_groups(STREAM_KEY):
        if group["name"] == GROUP:
            return int(group.get("lag") or 0) + int(group["pending"])
    return client.xlen(STREAM_KEY)


def stream_memory(client: redis.Redis) -> int:
    """Bytes the stream's key takes in Redis."""
    return int(client.memory_usage(STREAM_KEY, samples=0) or 0)


@contextlib.contextmanager
def database(stack: LocalStack):
    """A connection of its own to the stack's Postgres (one a drill killed is gone), in UTC."""
    conn = psycopg2.connect(stack.database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        yield conn
    finally:
        conn.close()
