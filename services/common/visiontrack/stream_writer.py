"""Appending accepted telemetry to the stream, with backpressure (docs/contracts.md section 1)."""
from __future__ import annotations

import threading
import time
from typing import Sequence

import redis

from .errors import ApiError
from .stream import Reading, backlog, encode_entry, shard_key_for


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
        cannot take it."""
        key = shard_key_for(self.base_key, self.shards, device_id)
        try:
            entry_id = self.redis.xadd(key, encode_entry(device_id, readings, received_ms))
        except redis.RedisError:
            raise self._unreachable() from None
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
