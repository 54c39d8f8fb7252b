"""Server-side prepared statements with generic plans, for the read queries asked thousands of times.

Postgres plans every statement it is sent. For the aggregate query (a UNION ALL over partitioned rollups
and raw rows) planning took about as long as running it: 0.43 and 0.51 ms for 30 days at 1h. Prepared once
per connection with plan_cache_mode=force_generic_plan, a statement is planned once and pruned to the
partitions it needs at run time; that query went from 1.5 to 1.0 ms as psycopg2 sees it. (In the default
mode Postgres keeps choosing custom plans for it, each planned afresh, so the mode is set for the session.)

`execute` takes the statement as psycopg2 does (%(name)s placeholders, a dict of values) and prepares each
distinct text on first use. Plain statements run instead for: a statement Postgres cannot prepare (a
parameter whose type it cannot infer), every text past MAX_PER_CONNECTION, a text not yet prepared when
the call is inside a transaction (it is prepared at its first call outside one), and everything on a
connection whose server forgot a statement it had prepared.

Each placeholder must stand where its type is plain: compared with a column, or cast. A bare
`SELECT %(v)s` would prepare with v as text, and an integer would come back as a string.
"""
from __future__ import annotations

import itertools
import re
import weakref
from typing import NamedTuple

import psycopg2
import psycopg2.errors

MAX_PER_CONNECTION = 64
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
_names = itertools.count(1)


class _Prepared(NamedTuple):
    params: tuple[str, ...]  # the placeholder names, in $1, $2... order
    execute: str  # EXECUTE vt_N(%s, ...): the values go in as literals of the parameters' types


_UNPREPARABLE = _Prepared((), "")
# connection -> {statement text -> how to run it}, or None once its server lost one; gone with the connection.
_statements: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def execute(cur, sql: str, params: dict) -> None:
    """cur.execute(sql, params), through a statement prepared on cur's connection."""
    prepared = _statements.setdefault(cur.connection, {})
    statement = prepared.get(sql) if prepared is not None else _UNPREPARABLE
    if statement is None and not cur.connection.autocommit:
        statement = _UNPREPARABLE  # a failed PREPARE would abort the caller's transaction: plain, this time
    elif statement is None:
        statement = _prepare(cur, sql) if len(prepared) < MAX_PER_CONNECTION else _UNPREPARABLE
        prepared[sql] = statement
    if statement is _UNPREPARABLE:
        cur.execute(sql, params)
        return
    try:
        cur.execute(statement.execute, [params[name] for name in statement.params])
    except psycopg2.errors.InvalidSqlStatementName:
        # The server no longer has it: a DISCARD ALL, or a pooler in front that hands out other backends.
        # This connection stops preparing (None) and runs its statements plain from now on.
        _statements[cur.connection] = None
        cur.execute(sql, params)


def _prepare(cur, sql: str) -> _Prepared:
    order: list[str] = []

    def number(match: re.Match) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    name = f"vt_{next(_names)}"
    try:
        # The session's mode goes with every PREPARE (one round trip): whatever this connection ran before,
        # its prepared statements run with generic plans.
        cur.execute(f"SET plan_cache_mode = force_generic_plan; PREPARE {name} AS {_PLACEHOLDER.sub(number, sql)}")
    except psycopg2.ProgrammingError:  # e.g. "could not determine data type of parameter"
        return _UNPREPARABLE
    arguments = ", ".join(["%s"] * len(order))
    return _Prepared(tuple(order), f"EXECUTE {name}({arguments})" if order else f"EXECUTE {name}")
