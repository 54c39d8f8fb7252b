"""Every metric the aggregator exports, in one place (prefix `visiontrack_aggregator_`).

Celery's prefork children each write their own files (prometheus-client multiprocess mode, set up by the
start script); `serve()` merges them on VT_METRICS_PORT, beside /healthz and /readyz (aggregator.health).
"""
from __future__ import annotations

import logging
import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger("aggregator.metrics")

READINGS = Counter("visiontrack_aggregator_readings_total",
                   "Readings taken from the stream, by outcome (inserted or duplicate).", ["outcome"])
ENTRIES = Counter("visiontrack_aggregator_entries_total", "Stream entries processed.", ["stream"])
STANDBY_CONFIRMS = Counter("visiontrack_aggregator_standby_confirms_total",
                           "Batches under VT_STANDBY_CONFIRM_SECONDS, by outcome: confirmed by a standby, "
                           "no_standby (none streaming: acknowledged at commit), behind (not in time: stored again "
                           "later).", ["outcome"])
DEAD_LETTERS = Counter("visiontrack_aggregator_dead_letters_total", "Entries moved to the dead-letter stream.")
BATCH_READINGS = Histogram("visiontrack_aggregator_batch_readings", "Readings per stored batch.",
                           buckets=(1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000))
WRITE_SECONDS = Histogram("visiontrack_aggregator_write_seconds", "Time to store and commit one batch.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
STREAM_LENGTH = Gauge("visiontrack_aggregator_stream_length_entries", "Entries in the stream (XLEN).",
                      ["stream"], multiprocess_mode="livemostrecent")
STREAM_PENDING = Gauge("visiontrack_aggregator_stream_pending_entries",
                       "Entries delivered to a consumer and not yet acknowledged.", ["stream"],
                       multiprocess_mode="livemostrecent")
STREAM_LAG = Gauge("visiontrack_aggregator_stream_lag_entries",
                   "Entries not yet delivered to the consumer group.", ["stream"], multiprocess_mode="livemostrecent")
DEAD_LETTER_LENGTH = Gauge("visiontrack_aggregator_dead_letter_entries", "Entries in the dead-letter stream.",
                           multiprocess_mode="livemostrecent")
TOKEN_INDEX_SIZE = Gauge("visiontrack_aggregator_token_index_entries", "Device tokens in the Redis index.",
                         multiprocess_mode="livemostrecent")
LAST_BATCH = Gauge("visiontrack_aggregator_last_batch_timestamp_seconds",
                   "When a batch was last stored and acknowledged (Unix time).", multiprocess_mode="max")
# Alert evaluation and notification (aggregator.alerting, aggregator.tasks.alerts).
ALERT_CHANGES = Counter("visiontrack_aggregator_alerts_total", "Alerts fired and resolved.", ["state"])
ALERT_DEVICES = Counter("visiontrack_aggregator_alert_devices_total",
                        "Devices with new readings looked at by threshold rule evaluations: walked (their new "
                        "readings read) or passed_over (their 1-minute rollups ruled the condition out).", ["path"])
WEBHOOK_CALLS = Counter("visiontrack_aggregator_webhook_calls_total", "Alert webhook calls, by outcome.",
                        ["outcome"])
WEBHOOK_OUTBOX = Counter("visiontrack_aggregator_webhook_outbox_total",
                         "Alert webhook outbox rows: written with an alert's change, swept (enqueued again), "
                         "skipped (a repeat of one delivered already), gave_up (retries spent or a 4xx).",
                         ["event"])
WEBHOOK_OUTBOX_PENDING = Gauge("visiontrack_aggregator_webhook_outbox_pending",
                               "Alert webhook calls neither delivered nor given up, as of the last sweep.",
                               multiprocess_mode="livemostrecent")

# Every label value exported from the start (at 0), so a dashboard shows 0 rather than no data.
for _outcome in ("inserted", "duplicate"):
    READINGS.labels(_outcome)
for _state in ("firing", "resolved"):
    ALERT_CHANGES.labels(_state)
for _path in ("walked", "passed_over"):
    ALERT_DEVICES.labels(_path)
for _outcome in ("delivered", "retried", "failed", "refused"):
    WEBHOOK_CALLS.labels(_outcome)
for _event in ("written", "swept", "skipped", "gave_up"):
    WEBHOOK_OUTBOX.labels(_event)


def record(entries: int, readings: int, inserted: int, dead_letters: int, stream: str) -> None:
    ENTRIES.labels(stream).inc(entries)
    if inserted:
        READINGS.labels("inserted").inc(inserted)
    if readings - inserted:
        READINGS.labels("duplicate").inc(readings - inserted)
    if dead_letters:
        DEAD_LETTERS.inc(dead_letters)
    if entries:
        LAST_BATCH.set_to_current_time()


def serve(port: int, config, dependencies: tuple[str, ...] = ("postgres", "redis")):
    """Serve, on `port`: /metrics for this process tree (merged across prefork children when multiprocess
    is on), /healthz, and /readyz answering whether `dependencies` answer (their URLs from `config`).
    Returns the server (None when port is 0)."""
    if port == 0:
        return None
    from visiontrack.readiness import Readiness, dependency_checks

    from . import health

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    readiness = Readiness(dependency_checks(config, "aggregator", dependencies))
    server = health.start(port, health.make_app(make_wsgi_app(registry), readiness))
    log.info("metrics on :%d/metrics, health on /healthz and /readyz (%s)", port, ", ".join(dependencies))
    return server


def process_exited(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
