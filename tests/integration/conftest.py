"""Shared by integration modules: a real local HTTP receiver for the webhooks (tests/receiver.py), and a
database of a module's own."""
from __future__ import annotations

import contextlib
import uuid

import psycopg2
import pytest
import redis

from stack.services import Process
from tests.receiver import Receiver


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.shutdown()


@contextlib.contextmanager
def own_database(postgres, base_env: dict, run_dir, prefix: str):
    """A migrated database of its own on the session's Postgres, with yesterday's and today's (UTC) telemetry
    partitions, dropped afterwards; yields its URL. For a module whose evaluator or aggregator must see only
    its own rows."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres.admin_url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    try:
        Process(f"migrate-{name}", "migrate", {**base_env, "DATABASE_URL": url},
                run_dir / "logs" / f"migrate-{name}.log").run_to_end(run_dir)
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn, conn.cursor() as cur:  # readings minutes old may fall in yesterday's partition
            cur.execute("SELECT vt_ensure_telemetry_partition(d::date) FROM generate_series("
                        "(now() AT TIME ZONE 'UTC') - interval '1 day', now() AT TIME ZONE 'UTC', interval '1 day') d")
        conn.close()
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def isolated(redis_server, base_env):
    """A Redis database and stream of the test's own, and a config pointing at them."""
    from visiontrack import config as config_module

    db_index = 1 + (uuid.uuid4().int % 14)
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db_index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    key = f"vt:test:{uuid.uuid4().hex[:8]}"
    env = {**base_env, "REDIS_URL": url, "VT_STREAM_KEY": key, "VT_DEAD_LETTER_KEY": f"{key}:dead"}
    yield client, key, env, config_module.load(env)
    client.flushdb()
