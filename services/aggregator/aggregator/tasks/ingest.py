"""Draining the telemetry stream and keeping it short."""
from __future__ import annotations

import logging

from ..celery_app import app, config
from .. import metrics, state

log = logging.getLogger("aggregator.tasks.ingest")


@app.task(name="aggregator.drain", ignore_result=True)
def drain(stream_key: str) -> dict:
    """Store what the shard holds for up to the drain budget; hand the rest to a fresh task."""
    if stream_key not in config.stream_keys:
        log.warning("ignoring drain of unknown stream %s", stream_key)
        return {}
    result = state.get().pipeline(stream_key).drain(config.drain_budget_seconds)
    if result.entries:
        log.log(logging.INFO if result.dead_letters or result.seconds >= 1 else logging.DEBUG,
                "stored %d readings (%d duplicates, %d dead letters) from %d entries of %s in %.2fs",
                result.inserted, result.readings - result.inserted, result.dead_letters, result.entries,
                stream_key, result.seconds)
    if result.more:
        drain.apply_async(args=(stream_key,), expires=60)
    return {"entries": result.entries, "inserted": result.inserted, "more": result.more}


@app.task(name="aggregator.trim_streams", ignore_result=True)
def trim_streams() -> int:
    """Drop what every group has acked, and export the stream's shape while at it."""
    st = state.get()
    trimmed = 0
    for key in config.stream_keys:
        if not st.redis.exists(key):  # a shard nothing was written to yet: no groups to ask, nothing to trim
            metrics.STREAM_LENGTH.labels(key).set(0)
            continue
        consumer = st.consumer(key)
        trimmed += consumer.trim()
        pipe = st.redis.pipeline(transaction=False)
        pipe.xlen(key)
        pipe.xinfo_groups(key)
        length, groups = pipe.execute()
        metrics.STREAM_LENGTH.labels(key).set(length)
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == config.stream_group:
                metrics.STREAM_PENDING.labels(key).set(int(info["pending"]))
                metrics.STREAM_LAG.labels(key).set(int(info.get("lag") or 0))
    metrics.DEAD_LETTER_LENGTH.set(st.redis.xlen(config.dead_letter_key))
    return trimmed
