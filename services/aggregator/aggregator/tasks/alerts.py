"""Alert rules evaluated on a schedule, and their webhooks called with retries and exponential backoff.

Evaluation runs beside ingestion (its own beat entry and connection), never inside a batch; a webhook
call is its own task, enqueued only after the alert's change is committed, so a slow or failing receiver
delays nobody.
"""
from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request

from ..alerting import Evaluator
from ..celery_app import app, config
from .. import state
from ..metrics import WEBHOOK_CALLS

log = logging.getLogger("aggregator.tasks.alerts")


class WebhookFailed(Exception):
    """The receiver could not be reached or answered 5xx/429: worth trying again later."""


_conn: dict = {}  # pid -> this process's evaluation connection (never one inherited through fork)


def _connection():
    conn = _conn.get(os.getpid())
    if conn is None or conn.closed:
        conn = _conn[os.getpid()] = state.get().db.connect()
    return conn


@app.task(name="aggregator.evaluate_alerts", ignore_result=True, time_limit=60, soft_time_limit=50)
def evaluate_alerts() -> int:
    conn = _connection()
    try:
        notifications = Evaluator(conn).run()
    except Exception:
        conn.close()
        raise
    for url, body in notifications:
        notify_webhook.apply_async(args=(url, body))
    return len(notifications)


@app.task(name="aggregator.notify_webhook", bind=True, ignore_result=True, autoretry_for=(WebhookFailed,),
          max_retries=config.webhook_max_retries, retry_backoff=config.webhook_backoff_seconds,
          retry_backoff_max=240, retry_jitter=False, time_limit=60, soft_time_limit=50)
def notify_webhook(self, url: str, body: dict) -> int:
    """POST the alert as JSON; retried on network errors, 5xx and 429, given up on other 4xx."""
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
        WEBHOOK_CALLS.labels("retried" if self.request.retries < self.max_retries else "failed").inc()
        log.warning("webhook %s for alert %s unreachable (attempt %d): %s", url, body["id"],
                    self.request.retries + 1, exc)
        raise WebhookFailed(str(exc)) from None
    if status >= 500 or status == 429:
        WEBHOOK_CALLS.labels("retried" if self.request.retries < self.max_retries else "failed").inc()
        log.warning("webhook %s for alert %s answered %d (attempt %d)", url, body["id"], status,
                    self.request.retries + 1)
        raise WebhookFailed(f"HTTP {status}")
    if status >= 400:
        WEBHOOK_CALLS.labels("refused").inc()
        log.warning("webhook %s refused alert %s with %d; not retried", url, body["id"], status)
        return status
    WEBHOOK_CALLS.labels("delivered").inc()
    return status
