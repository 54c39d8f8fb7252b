"""Alert rules evaluated on a schedule, and their webhooks called with retries and exponential backoff.

Each webhook call is a row of the webhook outbox first and a task of its own; `sweep_webhooks` enqueues
again the calls left pending. At least once: see docs/design.md, "Alert webhooks".
"""
from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Callable, Iterable

import psycopg2

from ..alerting import Evaluator, Notification
from ..celery_app import app, config
from .. import state
from ..metrics import WEBHOOK_CALLS, WEBHOOK_OUTBOX, WEBHOOK_OUTBOX_PENDING

log = logging.getLogger("aggregator.tasks.alerts")

RETRY_BACKOFF_MAX = 240  # seconds, the longest wait between two attempts
GAVE_UP_KEPT = "7 days"  # given-up outbox rows are kept this long for an operator, then pruned
SWEEP_BATCH = 1000


class WebhookFailed(Exception):
    """The receiver could not be reached or answered 5xx/429: worth trying again later."""


_conn: dict = {}  # pid -> this process's evaluation connection (never one inherited through fork)


def _connection():
    conn = _conn.get(os.getpid())
    if conn is None or conn.closed:
        conn = _conn[os.getpid()] = state.get().db.connect()
    return conn


def enqueue(notifications: Iterable[Notification]) -> int:
    """Enqueue a task per webhook call; what cannot be enqueued is left to the sweep (it is in the outbox)."""
    sent = 0
    for n in notifications:
        try:
            notify_webhook.apply_async(args=(n.url, n.body), kwargs={"outbox_id": n.outbox_id})
        except Exception as exc:  # the broker is out of reach: the rows are committed, the sweep sends them
            log.warning("could not enqueue the webhook of outbox row %d (%s); the sweep will", n.outbox_id, exc)
            break
        sent += 1
    return sent


def _evaluate(work: Callable[[Evaluator], list[Notification] | None]) -> list[Notification] | None:
    """Run `work` on this process's evaluator and enqueue the webhook calls it committed to the outbox. A
    failure closes the connection (it may be the broken part) and propagates."""
    conn = _connection()
    try:
        notifications = work(Evaluator(conn, config.webhook_sweep_grace_seconds))
    except Exception:
        conn.close()
        raise
    if notifications:
        enqueue(notifications)
    return notifications


@app.task(name="aggregator.evaluate_alerts", ignore_result=True, time_limit=60, soft_time_limit=50)
def evaluate_alerts() -> int:
    return len(_evaluate(Evaluator.run))


def resolve_deleted_devices(device_ids: list[int]) -> bool:
    """Resolve the firing alerts of deleted devices and enqueue their webhooks; False when an evaluation
    held the lock (it resolves them itself, their device being gone)."""
    return _evaluate(lambda evaluator: evaluator.resolve_deleted_devices(device_ids)) is not None


# --- the outbox's bookkeeping: best effort, a failure costs at most a repeated call -----------------------
def _outbox(sql: str, params: dict) -> dict | None:
    try:
        with state.get().db.transaction() as cur:
            cur.execute(sql, params)
            return cur.fetchone() if cur.description else None
    except psycopg2.Error as exc:
        log.warning("webhook outbox row %s: %s", params.get("id"), exc)
        raise


def _pending(outbox_id: int) -> bool:
    """Whether the row still waits for delivery; a missing row was delivered already (this task is a repeat)."""
    try:
        row = _outbox("SELECT gave_up_at IS NULL AS pending FROM webhook_outbox WHERE id = %(id)s",
                      {"id": outbox_id})
    except psycopg2.Error:
        return True  # Postgres out of reach: sending again beats not sending
    return bool(row and row["pending"])


def _delivered(outbox_id: int) -> None:
    try:
        _outbox("DELETE FROM webhook_outbox WHERE id = %(id)s", {"id": outbox_id})
    except psycopg2.Error:
        pass  # the sweep sends it again


def _failed(outbox_id: int, error: str, retry_in: float | None) -> None:
    """Count a failed attempt; retry_in None: no more attempts, the row is given up and never swept again.
    Otherwise the sweep leaves it alone until the retry had its grace period."""
    try:
        _outbox("""UPDATE webhook_outbox SET attempts = attempts + 1, last_error = %(error)s,
                       gave_up_at = CASE WHEN %(final)s THEN now() END,
                       next_attempt_at = now() + (%(wait)s * interval '1 second')
                   WHERE id = %(id)s""",
                {"id": outbox_id, "error": error[:500], "final": retry_in is None,
                 "wait": (retry_in or 0) + config.webhook_sweep_grace_seconds})
    except psycopg2.Error:
        pass  # at worst the sweep starts the retries again


@app.task(name="aggregator.notify_webhook", bind=True, ignore_result=True, autoretry_for=(WebhookFailed,),
          max_retries=config.webhook_max_retries, retry_backoff=config.webhook_backoff_seconds,
          retry_backoff_max=RETRY_BACKOFF_MAX, retry_jitter=False, time_limit=60, soft_time_limit=50)
def notify_webhook(self, url: str, body: dict, outbox_id: int | None = None) -> int | None:
    """POST the alert as JSON; retried on network errors, 5xx and 429, given up on other 4xx.

    The outbox row (`outbox_id`; None only for tasks enqueued before the outbox) is deleted once delivered
    and marked given up after the last retry or a 4xx; a task whose row is gone or given up sends nothing.
    """
    if outbox_id is not None and not _pending(outbox_id):
        WEBHOOK_OUTBOX.labels("skipped").inc()
        return None
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "visiontrack-aggregator",
                 "X-VisionTrack-Alert": f"{body['id']}:{body['state']}"})  # lets a receiver drop repeats
    try:
        with urllib.request.urlopen(request, timeout=config.webhook_timeout_seconds) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        _retry_later(self, url, body, outbox_id, f"unreachable: {exc}")
        log.warning("webhook %s for alert %s unreachable (attempt %d): %s", url, body["id"],
                    self.request.retries + 1, exc)
        raise WebhookFailed(str(exc)) from None
    if status >= 500 or status == 429:
        _retry_later(self, url, body, outbox_id, f"HTTP {status}")
        log.warning("webhook %s for alert %s answered %d (attempt %d)", url, body["id"], status,
                    self.request.retries + 1)
        raise WebhookFailed(f"HTTP {status}")
    if status >= 400:
        WEBHOOK_CALLS.labels("refused").inc()
        log.warning("webhook %s refused alert %s with %d; not retried", url, body["id"], status)
        if outbox_id is not None:
            WEBHOOK_OUTBOX.labels("gave_up").inc()
            _failed(outbox_id, f"HTTP {status}", None)
        return status
    WEBHOOK_CALLS.labels("delivered").inc()
    if outbox_id is not None:
        _delivered(outbox_id)
    return status


def _retry_later(task, url: str, body: dict, outbox_id: int | None, error: str) -> None:
    final = task.request.retries >= task.max_retries
    WEBHOOK_CALLS.labels("failed" if final else "retried").inc()
    if final:
        log.error("webhook %s for alert %s (%s) given up after %d attempts: %s", url, body["id"], body["state"],
                  task.request.retries + 1, error)
    if outbox_id is None:
        return
    if final:
        WEBHOOK_OUTBOX.labels("gave_up").inc()
    # The wait autoretry applies (retry_backoff without jitter): factor * 2^retries, capped.
    wait = min(RETRY_BACKOFF_MAX, config.webhook_backoff_seconds * 2 ** task.request.retries)
    _failed(outbox_id, error, None if final else wait)


@app.task(name="aggregator.sweep_webhooks", ignore_result=True, time_limit=60, soft_time_limit=50)
def sweep_webhooks() -> int:
    """Enqueue again the webhook calls still pending after their grace period, and prune old given-up rows.

    SKIP LOCKED and the grace period set again in the same statement keep two sweeps (or a sweep and a
    task) from enqueueing a row twice in one round; a task that finds its row delivered sends nothing.
    """
    with state.get().db.transaction() as cur:
        cur.execute("""UPDATE webhook_outbox o
                       SET next_attempt_at = now() + %(grace)s * interval '1 second'
                       FROM (SELECT id FROM webhook_outbox
                             WHERE gave_up_at IS NULL AND next_attempt_at <= now()
                             ORDER BY next_attempt_at LIMIT %(n)s FOR UPDATE SKIP LOCKED) due
                       WHERE o.id = due.id
                       RETURNING o.id, o.url, o.body, o.attempts""",
                    {"grace": config.webhook_sweep_grace_seconds, "n": SWEEP_BATCH})
        due = sorted(cur.fetchall(), key=lambda r: r["id"])
        cur.execute("DELETE FROM webhook_outbox WHERE gave_up_at < now() - %s::interval", (GAVE_UP_KEPT,))
        cur.execute("SELECT count(*) AS n FROM webhook_outbox WHERE gave_up_at IS NULL")
        WEBHOOK_OUTBOX_PENDING.set(cur.fetchone()["n"])
    if not due:
        return 0
    WEBHOOK_OUTBOX.labels("swept").inc(len(due))
    log.info("sweep: enqueueing %d pending webhook call(s) again (outbox rows %s)", len(due),
             ", ".join(str(r["id"]) for r in due[:20]) + (" …" if len(due) > 20 else ""))
    sent = enqueue(Notification(r["id"], r["url"], r["body"]) for r in due)
    if sent == len(due) == SWEEP_BATCH:
        sweep_webhooks.apply_async(countdown=1)  # more may be due
    return sent
