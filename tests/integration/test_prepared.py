"""Prepared read statements against a real Postgres: prepared once per connection with a generic plan, the
same answers as the plain statement, and a plain statement whenever preparing is impossible or unsafe."""
from __future__ import annotations

import psycopg2
import pytest

from visiontrack import prepared

SQL = "SELECT x * %(k)s, %(label)s::text FROM generate_series(1, %(n)s) AS x WHERE x %% 2 = %(odd)s ORDER BY x"


@pytest.fixture
def conn(postgres, base_env):
    conn = psycopg2.connect(postgres.url)
    conn.autocommit = True
    yield conn
    conn.close()


def _prepared_statements(conn) -> list[tuple[str, int, int]]:
    with conn.cursor() as cur:
        cur.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        return cur.fetchall()


def test_a_statement_is_prepared_once_and_runs_with_a_generic_plan(conn):
    with conn.cursor() as cur:
        for n, label in ((5, "a"), (7, "it's"), (5, "a")):
            params = {"k": 10, "label": label, "n": n, "odd": 1}
            prepared.execute(cur, SQL, params)
            got = cur.fetchall()
            cur.execute(SQL, params)
            assert got == cur.fetchall()
            assert got[-1] == (10 * n, label)
    [(statement, generic, custom)] = _prepared_statements(conn)
    assert "$1" in statement and "x % 2 = $4" in statement  # named placeholders numbered in order, %% as %
    assert (generic, custom) == (3, 0)


def test_each_connection_prepares_its_own(conn, postgres):
    other = psycopg2.connect(postgres.url)
    other.autocommit = True
    try:
        for c in (conn, other):
            with c.cursor() as cur:
                prepared.execute(cur, SQL, {"k": 1, "label": "b", "n": 3, "odd": 1})
                assert cur.fetchall() == [(1, "b"), (3, "b")]
            assert len(_prepared_statements(c)) == 1
    finally:
        other.close()


def test_what_cannot_be_prepared_runs_plain(conn):
    with conn.cursor() as cur:
        prepared.execute(cur, "SELECT %(v)s IS NULL", {"v": 42})  # the parameter's type cannot be inferred
        assert cur.fetchall() == [(False,)]
        prepared.execute(cur, "SELECT %(v)s IS NULL", {"v": None})
        assert cur.fetchall() == [(True,)]
    assert _prepared_statements(conn) == []


def test_inside_a_transaction_nothing_is_prepared(conn):
    """A PREPARE that fails would abort the caller's transaction: only autocommit reads prepare."""
    conn.autocommit = False
    with conn.cursor() as cur:
        prepared.execute(cur, SQL, {"k": 2, "label": "t", "n": 2, "odd": 0})
        assert cur.fetchall() == [(4, "t")]
    conn.rollback()
    conn.autocommit = True
    assert _prepared_statements(conn) == []


def test_a_connection_first_used_inside_a_transaction_still_prepares_generic_plans(conn):
    params = {"k": 1, "label": "g", "n": 3, "odd": 1}
    conn.autocommit = False
    with conn.cursor() as cur:
        prepared.execute(cur, SQL, params)
        cur.fetchall()
    conn.rollback()
    conn.autocommit = True
    with conn.cursor() as cur:
        for _ in range(3):
            prepared.execute(cur, SQL, params)
            assert cur.fetchall() == [(1, "g"), (3, "g")]
    [(_, generic, custom)] = _prepared_statements(conn)
    assert (generic, custom) == (3, 0)


def test_past_the_cap_statements_run_plain(conn, monkeypatch):
    monkeypatch.setattr(prepared, "MAX_PER_CONNECTION", 2)
    with conn.cursor() as cur:
        for i in range(4):
            prepared.execute(cur, f"SELECT {i} + %(v)s::int", {"v": 1})
            assert cur.fetchall() == [(i + 1,)]
    assert len(_prepared_statements(conn)) == 2


def test_a_connection_whose_server_forgot_its_statements_runs_plain(conn):
    """DISCARD ALL (or a pooler handing over another backend) drops what was prepared: the call still
    answers, and the connection prepares nothing more."""
    params = {"k": 3, "label": "d", "n": 3, "odd": 1}
    with conn.cursor() as cur:
        prepared.execute(cur, SQL, params)
        cur.execute("DISCARD ALL")
        prepared.execute(cur, SQL, params)
        assert cur.fetchall() == [(3, "d"), (9, "d")]
        prepared.execute(cur, SQL + " LIMIT 1", params)
        assert cur.fetchall() == [(3, "d")]
    assert _prepared_statements(conn) == []
