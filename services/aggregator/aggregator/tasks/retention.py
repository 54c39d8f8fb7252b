"""Retention: whole partitions dropped once everything in them is older than its table's retention.

Raw telemetry after VT_RETENTION_DAYS (daily partitions), 1-minute rollups after VT_ROLLUP_1M_RETENTION_DAYS
(daily), 1-hour rollups after VT_ROLLUP_1H_RETENTION_DAYS (monthly). Never a bulk DELETE. Each drop is its own
short transaction with a lock timeout, so a busy table is retried at the next run instead of stalling reads.
"""
from __future__ import annotations

import logging
import re
from datetime import date, datetime, timedelta, timezone

from ..celery_app import app, config
from .. import state

log = logging.getLogger("aggregator.tasks.retention")

_PARTITION = re.compile(r"^(telemetry|telemetry_1m|telemetry_1h)_(\d{6}|\d{8})$")


def _end(name: str) -> tuple[str, date] | None:
    """The parent table and the first day after the partition `name` covers."""
    m = _PARTITION.match(name)
    if not m:
        return None
    parent, stamp = m.groups()
    if len(stamp) == 8:
        return parent, datetime.strptime(stamp, "%Y%m%d").date() + timedelta(days=1)
    first = datetime.strptime(stamp + "01", "%Y%m%d").date()
    return parent, (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def expired(names: list[str], today: date, days: dict[str, int]) -> list[str]:
    out = []
    for name in names:
        found = _end(name)
        if found and found[1] <= today - timedelta(days=days[found[0]]):
            out.append(name)
    return sorted(out)


@app.task(name="aggregator.apply_retention", ignore_result=True, time_limit=300)
def apply_retention() -> list[str]:
    days = {"telemetry": config.retention_days, "telemetry_1m": config.rollup_1m_retention_days,
            "telemetry_1h": config.rollup_1h_retention_days}
    return drop_expired(state.get().db, days, datetime.now(timezone.utc).date())


def drop_expired(db, days: dict[str, int], today: date) -> list[str]:
    with db.transaction() as cur:
        cur.execute("""SELECT c.relname AS name FROM pg_inherits i
                       JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                       WHERE p.relname IN ('telemetry', 'telemetry_1m', 'telemetry_1h')""")
        names = [r["name"] for r in cur.fetchall()]
    dropped = []
    for name in expired(names, today, days):
        try:
            with db.transaction() as cur:
                cur.execute("SET LOCAL lock_timeout = '5s'")
                cur.execute(f'DROP TABLE IF EXISTS "{name}"')
            dropped.append(name)
        except Exception as exc:  # a lock not granted in time: next run
            log.warning("could not drop expired partition %s yet: %s", name, exc)
    if dropped:
        log.info("dropped %d expired partitions: %s", len(dropped), ", ".join(dropped))
    return dropped
