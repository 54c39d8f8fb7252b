"""Draining the telemetry stream and keeping it short."""
from __future__ import annotations

import logging

from ..celery_app import app, config
from .. import metrics, state

log = logging.getLogger("aggregator.tasks.ingest")


@app.task(name="aggregator.drain", ignore_result=True)
def drain(stream_key: str) -> dict:
    """Store what the shard holds for up to the drain budget; hand the rest to a fresh task.

    With VT_LIVE_DRAIN, the drain that holds the shard's listen lease waits on the stream for its whole
    budget and then hands over to a fresh task at once, so the shard always has a listener; when it falls
    behind it enqueues a helper. Any other drain (beat's ticks, a helper) works off a backlog and returns
    when the shard is empty, or, beside a listener, once it has caught up."""
    if stream_key not in config.stream_keys:
        log.warning("ignoring drain of unknown stream %s", stream_key)
        return {}
    st = state.get()
    lease = st.listen_lease(stream_key) if config.live_drain else None
    listen = lease is not None and lease.acquire()
    helper = lease is not None and not listen and lease.taken_by_another()
    try:
        result = st.pipeline(stream_key).drain(config.drain_budget_seconds, listen=listen, helper=helper,
                                               ask_for_help=lambda: _ask_for_help(stream_key))
    finally:
        if listen:
            lease.release()
    if result.entries:
        log.log(logging.INFO if result.dead_letters or (result.seconds >= 1 and not listen) else logging.DEBUG,
                "stored %d readings (%d duplicates, %d dead letters) from %d entries of %s in %.2fs",
                result.inserted, result.readings - result.inserted, result.dead_letters, result.entries,
                stream_key, result.seconds)
    if result.more or listen:
        drain.apply_async(args=(stream_key,), expires=60)
    return {"entries": result.entries, "inserted": result.inserted, "more": result.more, "listened": listen}


def _ask_for_help(stream_key: str) -> None:
    """A helper drain for a listener that fell behind; the listener goes on whatever the broker says."""
    try:
        drain.apply_async(args=(stream_key,), expires=5, retry=False)
    except Exception as exc:  # the broker is out of reach: beat's next tick brings a helper all the same
        log.warning("could not enqueue a helper drain of %s (%s)", stream_key, exc)


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
