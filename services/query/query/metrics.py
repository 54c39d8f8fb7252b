"""Every metric the query service exports besides the HTTP ones, in one place (prefix `visiontrack_query_`).

HTTP request counts and latency per route come from prometheus-flask-exporter (`visiontrack.web.app`).
These count what `POST /api/telemetry/` does with readings, named like the ingestor's, so the overview
dashboard adds the two writers up. Labels are bounded: `reason` is an error code of visiontrack.errors.

Under gunicorn every worker writes its own files (prometheus-client multiprocess mode, set up by
`vt-entrypoint`); `/metrics` merges them.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from visiontrack.errors import STATUS

READINGS_ACCEPTED = Counter("visiontrack_query_readings_accepted_total",
                            "Readings written to the stream by POST /api/telemetry/.")
READINGS_REJECTED = Counter("visiontrack_query_readings_rejected_total",
                            "Readings of parsed POST /api/telemetry/ requests that were not written, by reason.",
                            ["reason"])
INGEST_REJECTED = Counter("visiontrack_query_ingest_rejected_total",
                          "POST /api/telemetry/ requests answered with an error, by reason (error code).",
                          ["reason"])
BATCH_READINGS = Histogram("visiontrack_query_batch_readings", "Readings per accepted POST /api/telemetry/ request.",
                           buckets=(1, 2, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000))
# Sampled by query.replica_lag when /metrics is scraped.
REPLICA_LAG = Gauge("visiontrack_query_replica_lag_seconds",
                    "How far the read server (VT_DATABASE_READ_URL) lags behind the primary, seconds (0 without "
                    "one; NaN when it does not answer).", multiprocess_mode="livemostrecent")

# Every reason exported from the start (at 0), so a dashboard shows 0 rather than no data.
for _reason in STATUS:
    INGEST_REJECTED.labels(_reason)
    READINGS_REJECTED.labels(_reason)


def accepted(readings: int) -> None:
    READINGS_ACCEPTED.inc(readings)
    BATCH_READINGS.observe(readings)


def rejected(reason: str, readings: int = 0) -> None:
    """A write answered with error `reason`; `readings` when the body was parsed that far."""
    INGEST_REJECTED.labels(reason).inc()
    if readings:
        READINGS_REJECTED.labels(reason).inc(readings)
