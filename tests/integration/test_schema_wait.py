"""No part serves before its schema: /readyz is not ready while Postgres lacks a migration this image ships,
and `visiontrack wait-for-schema` (the chart's init container) waits, through a Postgres not up yet, until
`visiontrack migrate` (the chart's Job, started beside it) has applied them. Real Postgres, real processes."""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from stack.servers import Postgres, free_port
from tests.conftest import poll
from visiontrack import config as config_module
from visiontrack import migrate
from visiontrack.readiness import Readiness, dependency_checks

pytestmark = pytest.mark.integration

SHIPPED = migrate.available()
LACKS_ALL = "postgres schema lacks migrations " + ", ".join(f"{m.version:04d}" for m in SHIPPED)


@contextlib.contextmanager
def empty_database(postgres):
    """A database of its own on the session's Postgres, never migrated; dropped afterwards. Yields its URL."""
    name = f"schema_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres.admin_url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres.url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def sql(url: str, statement: str, *args) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement, args)
    conn.close()


def visiontrack(url: str, *args: str, log: Path | None = None) -> subprocess.Popen:
    """`visiontrack <args>` as the chart runs it, against `url`; its output to `log`, or piped."""
    env = {**os.environ, "DATABASE_URL": url, "VT_LOG_FORMAT": "text", "VT_LOG_LEVEL": "info"}
    out = open(log, "w") if log else subprocess.PIPE
    try:
        return subprocess.Popen([str(Path(sys.executable).parent / "visiontrack"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True)
    finally:
        if log:
            out.close()


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, (out or "") + (err or "")


# --- readiness ---------------------------------------------------------------------------------------

def test_readiness_should_not_be_ready_on_an_empty_database_and_be_ready_after_migrate(postgres, base_env):
    with empty_database(postgres) as url:
        config = config_module.load({**base_env, "DATABASE_URL": url})
        checks = dependency_checks(config, "registry", ("postgres", "redis"))
        assert Readiness(checks)() == [LACKS_ALL]  # Postgres and Redis answer: only the schema is wrong
        migrate.migrate(url)
        assert Readiness(checks)() == []


def test_readiness_should_name_only_what_is_missing_and_take_a_newer_schema(postgres, base_env):
    with empty_database(postgres) as url:
        migrate.migrate(url)
        checks = dependency_checks(config_module.load({**base_env, "DATABASE_URL": url}), "aggregator",
                                   ("postgres",))
        last = SHIPPED[-1]
        sql(url, "DELETE FROM schema_migrations WHERE version = %s", last.version)
        assert Readiness(checks)() == [f"postgres schema lacks migrations {last.version:04d}"]
        sql(url, "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s), (9999, 'newer', 'x')",
            last.version, last.name, last.checksum)
        assert Readiness(checks)() == []  # a rollback's older image on a newer schema


def test_an_api_should_answer_503_until_its_schema_is_there(postgres, base_env):
    from registry.app import create_app

    with empty_database(postgres) as url:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            app = create_app(config_module.load({**base_env, "DATABASE_URL": url}))
        finally:
            root.handlers[:], root.level = handlers, level  # create_app configures logging for the service
        svc = app.extensions["visiontrack"]
        try:
            client = app.test_client()
            resp = client.get("/readyz")
            assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
            assert resp.json == {"error": "unavailable", "message": f"not ready: {LACKS_ALL}", "details": []}
            migrate.migrate(url)
            poll(lambda: client.get("/readyz").status_code == 200, timeout=5, what="/readyz 200 once migrated")
        finally:
            svc.db.close()
            svc.redis.close()


# --- visiontrack wait-for-schema ------------------------------------------------------------------------

def test_wait_for_schema_should_say_what_it_waits_for_and_return_once_migrated(postgres, run_dir):
    log = run_dir / "logs" / f"wait-for-schema-{uuid.uuid4().hex[:8]}.log"
    with empty_database(postgres) as url:
        waiter = visiontrack(url, "wait-for-schema", "--timeout", "60", log=log)
        try:
            poll(lambda: f"waiting for migrations {SHIPPED[0].label}" in log.read_text(), timeout=15,
                 what="wait-for-schema naming the migrations it waits for")
            assert waiter.poll() is None, "wait-for-schema gave up on a database that was only not migrated yet"
            migrate.migrate(url)
            assert waiter.wait(timeout=15) == 0, log.read_text()
        finally:
            waiter.kill()
            waiter.wait()
    assert f"schema ready (this image's migrations up to {SHIPPED[-1].label} are applied)" in log.read_text()


def test_wait_for_schema_and_migrate_should_wait_for_a_postgres_that_is_not_up_yet(run_dir):
    """The chart's fresh install: the Job, the init containers and the in-chart Postgres all start at once."""
    server = Postgres(run_dir / f"pg-late-{uuid.uuid4().hex[:6]}", free_port(), run_dir / "logs" / "pg-late.log",
                      fast_and_loose=True)
    logs = {name: run_dir / "logs" / f"{name}-late.log" for name in ("wait-for-schema", "migrate")}
    waiter = visiontrack(server.url, "wait-for-schema", "--timeout", "120", log=logs["wait-for-schema"])
    migrator = visiontrack(server.url, "migrate", "--wait-for-postgres", "120", log=logs["migrate"])
    try:
        poll(lambda: all("waiting for postgres" in p.read_text() for p in logs.values()), timeout=15,
             what="both waiting for Postgres")
        assert waiter.poll() is None and migrator.poll() is None
        server.start()
        assert migrator.wait(timeout=60) == 0, logs["migrate"].read_text()
        assert waiter.wait(timeout=30) == 0, logs["wait-for-schema"].read_text()
    finally:
        for proc in (waiter, migrator):
            proc.kill()
            proc.wait()
        server.stop()
    assert "schema up to date (applied 0001" in logs["migrate"].read_text()
    assert "schema ready" in logs["wait-for-schema"].read_text()


def test_wait_for_schema_should_give_up_at_its_timeout_naming_what_is_missing(postgres):
    with empty_database(postgres) as url:
        migrate.migrate(url)
        last = SHIPPED[-1]
        sql(url, "DELETE FROM schema_migrations WHERE version = %s", last.version)
        started = time.monotonic()
        code, out = finish(visiontrack(url, "wait-for-schema", "--timeout", "1"))
        assert code == 1 and time.monotonic() - started < 10
        assert f"visiontrack: schema not ready after 1 s: waiting for migrations {last.label}" in out, out
        assert "Traceback" not in out


def test_wait_for_schema_should_take_a_newer_schema_at_once(postgres):
    with empty_database(postgres) as url:
        migrate.migrate(url)
        sql(url, "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'newer', 'x')")
        code, out = finish(visiontrack(url, "wait-for-schema", "--timeout", "0"))
        assert code == 0, out


def test_wait_for_schema_should_refuse_a_changed_migration_at_once(postgres):
    """Waiting cannot mend it: the database holds a migration this image's file no longer matches."""
    with empty_database(postgres) as url:
        migrate.migrate(url)
        sql(url, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = %s", SHIPPED[0].version)
        started = time.monotonic()
        code, out = finish(visiontrack(url, "wait-for-schema", "--timeout", "60"))
        assert code == 1 and time.monotonic() - started < 15, out
        assert f"visiontrack: migration {SHIPPED[0].label} changed after it was applied" in out, out
        assert "Traceback" not in out


def test_a_bad_database_url_should_be_named_not_crash():
    code, out = finish(visiontrack("postgresql://x@127.0.0.1:5432/x?bogus=1", "migrate"))
    assert code == 1 and "visiontrack: postgres: invalid dsn" in out and "Traceback" not in out, out
    code, out = finish(visiontrack("postgresql://x@127.0.0.1:5432/x?bogus=1", "wait-for-schema", "--timeout", "0"))
    assert code == 1 and "schema not ready after 0 s: waiting for postgres (invalid dsn" in out, out
