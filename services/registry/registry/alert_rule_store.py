"""Alert rules in Postgres.

A deleted rule is only marked (`deleted_at`, and disabled) and hidden from every query here at once: the
aggregator resolves its firing alerts at its next evaluation, sends the "resolved" webhooks after its commit and
removes the row. It stays the one writer of alert events, and no request waits on a webhook.
"""
from __future__ import annotations

import psycopg2.errors

from visiontrack.errors import ApiError

from .alert_rule_kinds import check_rule

_COLUMNS = ("id, name, kind, metric, op, threshold, for_seconds, after_seconds, device_id, device_type, severity, "
            "webhook_url, enabled, created_at, updated_at")
WRITABLE = ("name", "kind", "metric", "op", "threshold", "for_seconds", "after_seconds", "device_id",
            "device_type", "severity", "webhook_url", "enabled")
FILTERS = ("kind", "metric", "device_id", "device_type", "severity", "enabled")
_LIVE = "deleted_at IS NULL"


def _not_found(rule_id: int) -> ApiError:
    return ApiError("not_found", f"alert rule {rule_id} does not exist")


def _no_device() -> ApiError:
    return ApiError("validation_error", "invalid alert rule; see details",
                    [{"field": "device_id", "message": "no such device"}])


class AlertRuleStore:
    def __init__(self, db):
        self.db = db

    def list(self, after: list | None, limit: int, filters: dict) -> list[dict]:
        """Live rules in id order after the key `after`, those of FILTERS not None matched exactly."""
        where, params = [_LIVE], {"limit": limit}
        for col in FILTERS:
            if filters.get(col) is not None:
                where.append(f"{col} = %({col})s")
                params[col] = filters[col]
        if after is not None:
            where.append("id > %(after)s")
            params["after"] = after[0]
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE {' AND '.join(where)} ORDER BY id "
                        "LIMIT %(limit)s", params)
            return cur.fetchall()

    def create(self, rule: dict) -> dict:
        """Insert a rule already checked (check_rule); its device must exist."""
        try:
            with self.db.transaction() as cur:
                cur.execute(f"INSERT INTO alert_rules ({', '.join(WRITABLE)}) "
                            f"VALUES ({', '.join(f'%({n})s' for n in WRITABLE)}) RETURNING {_COLUMNS}", rule)
                return cur.fetchone()
        except psycopg2.errors.ForeignKeyViolation:
            raise _no_device() from None

    def get(self, rule_id: int) -> dict:
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE id = %s AND {_LIVE}", (rule_id,))
            rule = cur.fetchone()
        if rule is None:
            raise _not_found(rule_id)
        return rule

    def update(self, rule_id: int, changes: dict) -> dict:
        """Apply `changes` if the rule they make passes check_rule; its alert state starts afresh."""
        try:
            with self.db.transaction() as cur:
                cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE id = %s AND {_LIVE} FOR UPDATE", (rule_id,))
                rule = cur.fetchone()
                if rule is None:
                    raise _not_found(rule_id)
                if not changes:
                    return rule
                check_rule({**rule, **changes})
                sets = ", ".join(f"{col} = %({col})s" for col in changes)
                cur.execute(f"UPDATE alert_rules SET {sets}, updated_at = now() WHERE id = %(id)s "
                            f"RETURNING {_COLUMNS}", {**changes, "id": rule_id})
                updated = cur.fetchone()
                cur.execute("DELETE FROM alert_state WHERE rule_id = %s", (rule_id,))
                return updated
        except psycopg2.errors.ForeignKeyViolation:
            raise _no_device() from None

    def delete(self, rule_id: int) -> None:
        """Mark the rule deleted (see the module's docstring). `enabled = false` too, so an evaluator that
        predates deleted_at still resolves its alerts."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE alert_rules SET deleted_at = now(), enabled = false "
                        f"WHERE id = %s AND {_LIVE} RETURNING id", (rule_id,))
            if cur.fetchone() is None:
                raise _not_found(rule_id)
