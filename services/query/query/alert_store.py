"""Alert events in Postgres, newest first."""
from __future__ import annotations

_COLUMNS = "id, rule_id, device_id, state, value, started_at, resolved_at"
_EQUAL = ("device_id", "rule_id", "state")


def fetch_alerts(db, filters: dict, after: list | None, limit: int) -> list[dict]:
    """Events by descending id before the key `after` ([id] or None); `filters` holds device_id, rule_id and
    state (matched when not None) and `from_`/`to`, bounds of started_at."""
    where, params = ["TRUE"], {"limit": limit}
    for col in _EQUAL:
        if filters[col] is not None:
            where.append(f"{col} = %({col})s")
            params[col] = filters[col]
    if filters["from_"] is not None:
        where.append("started_at >= %(from)s")
        params["from"] = filters["from_"]
    if filters["to"] is not None:
        where.append("started_at < %(to)s")
        params["to"] = filters["to"]
    if after is not None:
        where.append("id < %(after)s")
        params["after"] = after[0]
    with db.transaction() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM alert_events WHERE {' AND '.join(where)} ORDER BY id DESC "
                    "LIMIT %(limit)s", params)
        return cur.fetchall()
