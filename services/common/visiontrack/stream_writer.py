"""Appending accepted telemetry to the stream, with backpressure (docs/contracts.md section 1)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

import redis

from .errors import ApiError
from .stream import Reading, backlog, encode_entry, shard_key_for

log = logging.getLogger(__name__)

# A write whose answer was lost (docs/design.md, "A write in doubt"): entry ids carry Redis's clock, so the
# search starts this far before ours; it looks at most this many entries, for at most this long.
CLOCK_SLACK_MS = 2_000
SCAN_LIMIT = 10_000
SETTLE_SECONDS = 7.5
SETTLE_PAUSE = 0.1


class StreamWriter:
    def __init__(self, redis_client, config):
        self.redis = redis_client
        self.base_key = config.stream_key
        self.shards = config.stream_shards
        self.group = config.stream_group
        self.high_water = config.stream_high_water
        self.check_interval = config.backlog_check_ms / 1000
        self.retry_after = config.retry_after_seconds
        self._sampled: dict[str, tuple[float, int]] = {}  # key -> (when, backlog)
        self._lock = threading.Lock()

    def _unavailable(self, why: str) -> ApiError:
        return ApiError("unavailable", why, retry_after=self.retry_after)

    def _backlog(self, key: str) -> int:
        now = time.monotonic()
        with self._lock:
            sampled = self._sampled.get(key)
        if sampled and now - sampled[0] < self.check_interval:
            return sampled[1]
        value = backlog(self.redis, key, self.group)
        with self._lock:
            self._sampled[key] = (now, value)
        return value

    def check_room(self, device_id: int) -> None:
        """Raise 503 when the device's shard is over its high-water mark. Call it before `append`, as early
        as the device is known: before the body is read when its token names it, so an overloaded stream
        costs no parsing (as in the ingestor)."""
        key = shard_key_for(self.base_key, self.shards, device_id)
        try:
            over = self._backlog(key) > self.high_water
        except redis.RedisError:
            raise self._unreachable() from None
        if over:
            raise self._unavailable("the telemetry backlog is over its high-water mark; retry later")

    def _unreachable(self) -> ApiError:
        return self._unavailable("the telemetry stream (Redis) is unreachable; retry later")

    def append(self, device_id: int, readings: Sequence[Reading], received_ms: int) -> str:
        """XADD one entry (after `check_room`); the returned id means Redis has it. Raise 503 when Redis
        cannot take it; when its answer was lost, ask Redis first (docs/design.md, "A write in doubt")."""
        key = shard_key_for(self.base_key, self.shards, device_id)
        fields = encode_entry(device_id, readings, received_ms)
        try:
            entry_id = self.redis.xadd(key, fields)
        except (redis.ConnectionError, redis.TimeoutError):
            # Received before it was sent: an entry Redis added has an id past this, clocks allowing.
            entry_id = self._find(key, fields, f"{max(0, received_ms - CLOCK_SLACK_MS)}-0")
            if entry_id is None:
                raise self._unreachable() from None
        except redis.RedisError:
            raise self._unreachable() from None
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def _find(self, key: str, fields: dict[str, str], after: str) -> bytes | None:
        """The id of an entry holding exactly `fields` after `after`, asking until Redis answers (at most
        SETTLE_SECONDS); None when it is not there, or nobody could tell."""
        want = {name.encode(): value.encode() for name, value in fields.items()}
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            try:
                entries = self.redis.xrange(key, min=after, max="+", count=SCAN_LIMIT)
                break
            except redis.RedisError:
                if time.monotonic() + SETTLE_PAUSE >= deadline:
                    log.warning("the answer to an XADD on %s was lost and Redis did not answer since", key)
                    return None
                time.sleep(SETTLE_PAUSE)
        found = next((entry_id for entry_id, got in entries if got == want), None)
        log.warning("the answer to an XADD on %s was lost; Redis %s the entry", key,
                    "holds" if found else "does not hold")
        return found
