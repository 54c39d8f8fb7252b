"""Server-side prepared statements with generic plans, for the read queries asked thousands of times.

`execute` takes the statement as psycopg2 does (%(name)s placeholders, a dict of values) and prepares each
distinct text on first use, or runs it plain where it cannot. Each placeholder must stand where its type
is plain (compared with a column, or cast). Why, with measurements, and when statements run plain: see
docs/design.md, "Prepared statements".
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
