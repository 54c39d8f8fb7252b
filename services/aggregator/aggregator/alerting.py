"""Alert rule evaluation: threshold rules over the readings, inactivity rules over last-seen times.

`Evaluator.run` evaluates every enabled rule in one transaction, under an advisory lock, and returns the
webhook calls to enqueue after the commit (each already written to the webhook outbox). Holds, staleness,
late readings, rules and devices leaving a scope, and why quiet devices cost one index probe: see
docs/design.md, "Alert evaluation".
"""
from __future__ import annotations

import itertools
import json
import logging
import operator
from datetime import datetime, timedelta
from typing import Callable, NamedTuple

import psycopg2.extras

from visiontrack.web.timefmt import EPOCH, format_ts, from_ms

from .metrics import ALERT_CHANGES, ALERT_DEVICES, WEBHOOK_OUTBOX

log = logging.getLogger("aggregator.alerting")

LOCK_ID = 0x5654_414C  # "VTAL"
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
       "!=": operator.ne}
# SQL: whether some value within [b.lo, b.hi] could meet `op threshold`; false rules out every reading the
# range covers.
COULD_HOLD = {">": "b.hi > %(threshold)s", ">=": "b.hi >= %(threshold)s", "<": "b.lo < %(threshold)s",
              "<=": "b.lo <= %(threshold)s", "==": "b.lo <= %(threshold)s AND %(threshold)s <= b.hi",
              "!=": "NOT (b.lo = %(threshold)s AND b.hi = %(threshold)s)"}
READINGS_PER_DEVICE = 5000  # per evaluation; the rest waits for the next one
LOOKBACK = timedelta(minutes=5)  # a new rule or device also sees readings this much older than the rule
# How long past for_seconds a device's last reading still counts as the condition holding (Prometheus's
# default lookback is the same 5 minutes): room for a late evaluation, not for a device that went quiet.
STALE_AFTER = timedelta(minutes=5)
# The rollups are trusted to bound a device's new readings only for a watermark this recent: any retention
# setting keeps the 1-minute rollups of the last hour, whatever it drops of older ones.
ROLLUP_BOUND_WINDOW = timedelta(hours=1)

_EVENT = "id, rule_id, device_id, state, value, started_at, resolved_at"


def _scope(alias: str = "d") -> str:
    return (f"{alias}.status = 'active' AND (%(scope_device)s::bigint IS NULL OR {alias}.id = %(scope_device)s) "
            f"AND (%(scope_type)s::text IS NULL OR {alias}.type = %(scope_type)s)")


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else format_ts(ts)


def _epoch_ms(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def payload(event: dict, rule: dict) -> dict:
    """The JSON a webhook receives: the alert as GET /api/alerts/ shows it, and the rule that raised it."""
    return {
        "id": event["id"], "rule_id": event["rule_id"], "device_id": event["device_id"], "state": event["state"],
        "value": event["value"], "started_at": _iso(event["started_at"]), "resolved_at": _iso(event["resolved_at"]),
        "rule": {k: rule[k] for k in ("name", "kind", "severity", "metric", "op", "threshold", "for_seconds",
                                      "after_seconds", "device_id", "device_type")},
    }


class Notification(NamedTuple):
    """A webhook call to make: its outbox row, the rule's URL and the alert's JSON."""
    outbox_id: int
    url: str
    body: dict


class Evaluator:
    def __init__(self, conn, sweep_grace_seconds: float = 60.0):
        self.conn = conn
        self.sweep_grace_seconds = sweep_grace_seconds  # the outbox sweep leaves a new row alone this long

    def run(self) -> list[Notification]:
        """Evaluate every enabled rule in one transaction; return the webhook calls to enqueue."""
        return self._locked(self._evaluate) or []

    def resolve_deleted_devices(self, device_ids: list[int]) -> list[Notification] | None:
        """Resolve the firing alerts of these deleted devices, with their webhooks; None when an evaluation
        holds the lock (it resolves them itself: their device is gone)."""
        return self._locked(lambda cur: self._out_of_scope(cur, device_ids))

    def _evaluate(self, cur) -> list[tuple[dict, dict]]:
        changes: list[tuple[dict, dict]] = []
        cur.execute("SELECT * FROM alert_rules WHERE enabled AND deleted_at IS NULL ORDER BY id")
        rules = cur.fetchall()
        for rule in rules:
            params = {"rule": rule["id"], "scope_device": rule["device_id"],
                      "scope_type": rule["device_type"], "metric": rule["metric"]}
            if rule["kind"] == "threshold":
                events = self._threshold(cur, rule, params)
                if rule["for_seconds"]:
                    events += self._held(cur, rule, params)
            else:
                events = self._inactivity(cur, rule, params)
            changes.extend((rule, e) for e in events)
        changes.extend(self._out_of_scope(cur))
        self._purge_deleted(cur)
        return changes

    def _locked(self, work: Callable[..., list[tuple[dict, dict]]]) -> list[Notification] | None:
        """Run `work` under the evaluation lock and write its changes' webhooks to the outbox, in one
        transaction; None when another evaluation holds the lock."""
        # Devices walked or passed over by this evaluation, counted (ALERT_DEVICES) once it commits: a
        # rolled-back evaluation is done again and must not count its devices twice.
        self._devices = {"walked": 0, "passed_over": 0}
        try:
            with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("SELECT pg_try_advisory_xact_lock(%s) AS got", (LOCK_ID,))
                if not cur.fetchone()["got"]:
                    self.conn.rollback()
                    return None
                changes = work(cur)
                notifications = self._outbox(cur, changes)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        for path, n in self._devices.items():
            if n:
                ALERT_DEVICES.labels(path).inc(n)
        for rule, event in changes:
            ALERT_CHANGES.labels(event["state"]).inc()
            log.info("alert %d (%s, rule %d %r, device %d) %s", event["id"], rule["severity"], rule["id"],
                     rule["name"], event["device_id"], event["state"])
        if notifications:
            WEBHOOK_OUTBOX.labels("written").inc(len(notifications))
        return notifications

    def _outbox(self, cur, changes: list[tuple[dict, dict]]) -> list[Notification]:
        rows = [(rule["webhook_url"], json.dumps(payload(event, rule)), self.sweep_grace_seconds)
                for rule, event in changes if rule["webhook_url"]]
        if not rows:
            return []
        written = psycopg2.extras.execute_values(
            cur, """INSERT INTO webhook_outbox (url, body, next_attempt_at) VALUES %s
                    RETURNING id, url, body""",
            rows, template="(%s, %s, now() + %s * interval '1 second')", page_size=1000, fetch=True)
        return [Notification(r["id"], r["url"], r["body"]) for r in written]

    # --- threshold ------------------------------------------------------------------------------------
    def _threshold(self, cur, rule: dict, params: dict) -> list[dict]:
        # b: the range of the device's values in the minutes since its watermark, from the rollups (written in
        # the same transactions as the readings, so they cover every one this statement sees), asked only
        # where a walk could do nothing but move the watermark. Where the range rules the condition out, the
        # watermark moves to the latest reading right here; the other devices are returned to be walked.
        cur.execute(f"""WITH candidate AS (
                            SELECT l.device_id, l.ts AS latest, w.watermark, s.since, e.id IS NOT NULL AS firing,
                                   b.hi IS NULL OR ({COULD_HOLD[rule["op"]]}) AS to_walk
                            FROM telemetry_latest l
                            JOIN devices d ON d.id = l.device_id
                            LEFT JOIN alert_state s ON s.rule_id = %(rule)s AND s.device_id = l.device_id
                            LEFT JOIN alert_events e ON e.rule_id = %(rule)s AND e.device_id = l.device_id
                                                    AND e.state = 'firing'
                            CROSS JOIN LATERAL (SELECT coalesce(s.watermark, %(start)s) AS watermark) w
                            CROSS JOIN LATERAL (
                                SELECT min(m.min) AS lo, max(m.max) AS hi FROM telemetry_1m m
                                WHERE s.since IS NULL AND e.id IS NULL AND w.watermark > now() - %(window)s
                                  AND m.device_id = l.device_id AND m.metric = l.metric
                                  AND m.bucket >= date_bin('1 minute', w.watermark, timestamptz 'epoch')
                                  AND m.bucket <= l.ts) b
                            WHERE l.metric = %(metric)s AND {_scope()}
                              AND l.ts > w.watermark),
                        passed_over AS (
                            INSERT INTO alert_state (rule_id, device_id, watermark, since)
                            SELECT %(rule)s, device_id, latest, NULL FROM candidate WHERE NOT to_walk
                            ON CONFLICT (rule_id, device_id) DO UPDATE SET watermark = excluded.watermark,
                                                                           since = NULL
                            RETURNING 1)
                        -- One row at least, so the count comes back when no device is to be walked.
                        SELECT c.device_id, c.watermark, c.since, c.firing, p.n AS passed_over
                        FROM (SELECT count(*) AS n FROM passed_over) p
                        LEFT JOIN candidate c ON c.to_walk""",
                    {**params, "start": rule["updated_at"] - LOOKBACK, "window": ROLLUP_BOUND_WINDOW,
                     "threshold": rule["threshold"]})
        rows = cur.fetchall()
        devices = {r["device_id"]: r for r in rows if r["device_id"] is not None}
        self._devices["passed_over"] += rows[0]["passed_over"]
        self._devices["walked"] += len(devices)
        return self._walk(cur, rule, devices) if devices else []

    def _walk(self, cur, rule: dict, devices: dict[int, dict]) -> list[dict]:
        """Walk these devices' new readings in time order, fire and resolve, and save where each one stands."""
        # Plain tuples with times as epoch ms: this loop sees every new reading, so it stays lean.
        holds = OPS[rule["op"]]
        with self.conn.cursor() as plain:
            plain.execute("""SELECT w.device_id, round(date_part('epoch', t.ts) * 1000)::bigint, t.value
                             FROM unnest(%(ids)s::bigint[], %(after)s::timestamptz[]) AS w(device_id, after)
                             CROSS JOIN LATERAL (
                                 SELECT ts, value FROM telemetry
                                 WHERE device_id = w.device_id AND metric = %(metric)s AND ts > w.after
                                 ORDER BY ts LIMIT %(n)s) t
                             ORDER BY 1, 2""",
                          {"ids": list(devices), "after": [d["watermark"] for d in devices.values()],
                           "metric": rule["metric"], "n": READINGS_PER_DEVICE})
            rows = plain.fetchall()
        threshold, hold_ms = rule["threshold"], rule["for_seconds"] * 1000
        events, states = [], []
        for device_id, series in itertools.groupby(rows, key=operator.itemgetter(0)):
            since = devices[device_id]["since"]
            since = None if since is None else _epoch_ms(since)
            firing = devices[device_id]["firing"]
            ts = None
            for _, ts, value in series:
                if holds(value, threshold):
                    if since is None:
                        since = ts
                    if not firing and ts - since >= hold_ms:
                        event = self._fire(cur, rule["id"], device_id, value, from_ms(since))
                        if event:
                            events.append(event)
                        firing = True
                else:
                    since = None
                    if firing:
                        events.extend(self._resolve(cur, rule["id"], device_id, from_ms(ts)))
                        firing = False
            states.append((rule["id"], device_id, from_ms(ts), None if since is None else from_ms(since)))
        if not states:
            return events
        psycopg2.extras.execute_values(
            cur, """INSERT INTO alert_state (rule_id, device_id, watermark, since) VALUES %s
                    ON CONFLICT (rule_id, device_id) DO UPDATE SET watermark = excluded.watermark,
                                                                   since = excluded.since""", states)
        return events

    def _held(self, cur, rule: dict, params: dict) -> list[dict]:
        """Fire where the condition has held for for_seconds by the clock, with no later reading to show it."""
        # `l.ts <= s.watermark`: every reading up to the device's latest has been walked, so the last one
        # still meets the condition (a device past READINGS_PER_DEVICE, or with readings committed after the
        # walk, waits for the walk).
        cur.execute(f"""SELECT s.device_id, s.since, l.value
                        FROM alert_state s
                        JOIN devices d ON d.id = s.device_id
                        JOIN telemetry_latest l ON l.device_id = s.device_id AND l.metric = %(metric)s
                        WHERE s.rule_id = %(rule)s AND s.since IS NOT NULL
                          AND s.since <= now() - %(hold)s
                          AND s.watermark > now() - %(hold)s - %(stale)s
                          AND l.ts <= s.watermark
                          AND {_scope()}
                          AND NOT EXISTS (SELECT 1 FROM alert_events e
                                          WHERE e.rule_id = s.rule_id AND e.device_id = s.device_id
                                            AND e.state = 'firing')""",
                    {**params, "hold": timedelta(seconds=rule["for_seconds"]), "stale": STALE_AFTER})
        events = []
        for row in cur.fetchall():
            event = self._fire(cur, rule["id"], row["device_id"], row["value"], row["since"])
            if event:
                events.append(event)
        return events

    # --- inactivity -----------------------------------------------------------------------------------
    def _inactivity(self, cur, rule: dict, params: dict) -> list[dict]:
        if rule["metric"]:
            seen = "(SELECT l.ts FROM telemetry_latest l WHERE l.device_id = d.id AND l.metric = %(metric)s)"
        else:
            seen = "d.last_seen_at"
        cur.execute(f"""WITH scoped AS (
                            SELECT d.id AS device_id, x.seen,
                                   coalesce(x.seen, greatest(d.created_at, %(changed)s)) AS quiet_since
                            FROM devices d CROSS JOIN LATERAL (SELECT {seen} AS seen) x
                            WHERE {_scope()})
                        SELECT s.device_id, s.seen, s.quiet_since, e.id AS firing_id, e.started_at,
                               extract(epoch FROM now() - s.quiet_since) AS quiet_seconds, now() AS now
                        FROM scoped s
                        LEFT JOIN alert_events e ON e.rule_id = %(rule)s AND e.device_id = s.device_id
                                                AND e.state = 'firing'
                        WHERE (e.id IS NULL) = (s.quiet_since <= now() - %(after)s * interval '1 second')""",
                    {**params, "changed": rule["updated_at"], "after": rule["after_seconds"]})
        events = []
        after = timedelta(seconds=rule["after_seconds"])
        for row in cur.fetchall():
            if row["firing_id"] is None:
                event = self._fire(cur, rule["id"], row["device_id"], float(row["quiet_seconds"]),
                                   row["quiet_since"] + after)
                if event:
                    events.append(event)
            else:
                when = max(row["seen"] or row["now"], row["started_at"])
                events.extend(self._resolve(cur, rule["id"], row["device_id"], when))
        return events

    # --- alerts whose device left the scope, or whose rule was disabled or deleted ------------------------
    def _out_of_scope(self, cur, device_ids: list[int] | None = None) -> list[tuple[dict, dict]]:
        """Resolve the firing alerts out of their rule's scope (of `device_ids` only, when given)."""
        cur.execute(f"""UPDATE alert_events e SET state = 'resolved', resolved_at = greatest(now(), e.started_at)
                        FROM alert_rules r
                        WHERE e.rule_id = r.id AND e.state = 'firing'
                          AND (%(devices)s::bigint[] IS NULL OR e.device_id = ANY(%(devices)s::bigint[])) AND (
                            NOT r.enabled OR r.deleted_at IS NOT NULL OR NOT EXISTS (
                            SELECT 1 FROM devices d WHERE d.id = e.device_id AND d.status = 'active'
                              AND (r.device_id IS NULL OR d.id = r.device_id)
                              AND (r.device_type IS NULL OR d.type = r.device_type)))
                        RETURNING {', '.join('e.' + c.strip() for c in _EVENT.split(','))}, r.id AS rid""",
                    {"devices": device_ids})
        events = cur.fetchall()
        if not events:
            return []
        cur.execute("SELECT * FROM alert_rules WHERE id = ANY(%s)", (list({e["rid"] for e in events}),))
        rules = {r["id"]: r for r in cur.fetchall()}
        return [(rules[e["rid"]], e) for e in events]

    @staticmethod
    def _purge_deleted(cur) -> None:
        """Remove the rules deleted through the API, with their (now resolved) alerts and state."""
        # A rule deleted after _out_of_scope ran may still have a firing alert: it waits for the next
        # evaluation, so that alert too is resolved and announced before it goes.
        cur.execute("""DELETE FROM alert_rules r WHERE r.deleted_at IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM alert_events e WHERE e.rule_id = r.id AND e.state = 'firing')
                       RETURNING r.id""")
        for row in cur.fetchall():
            log.info("removed deleted alert rule %d with its alerts", row["id"])

    @staticmethod
    def _fire(cur, rule_id: int, device_id: int, value: float, started_at: datetime) -> dict | None:
        cur.execute(f"""INSERT INTO alert_events (rule_id, device_id, state, value, started_at)
                        VALUES (%s, %s, 'firing', %s, %s)
                        ON CONFLICT (rule_id, device_id) WHERE state = 'firing' DO NOTHING
                        RETURNING {_EVENT}""", (rule_id, device_id, value, started_at))
        return cur.fetchone()

    @staticmethod
    def _resolve(cur, rule_id: int, device_id: int, when: datetime) -> list[dict]:
        cur.execute(f"""UPDATE alert_events SET state = 'resolved', resolved_at = greatest(%s, started_at)
                        WHERE rule_id = %s AND device_id = %s AND state = 'firing' RETURNING {_EVENT}""",
                    (when, rule_id, device_id))
        return cur.fetchall()
