"""Appending accepted telemetry to the stream, with backpressure (docs/contracts.md section 1)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

import redis
from redis.exceptions import RedisClusterException

from .errors import ApiError
from .redis_client import is_cluster, node_client
from .stream import Reading, backlog, encode_entry, shard_key_for

# The 503 of a write that may be stored (too few replicas confirmed it, or its answer was lost and Redis could
# not say): unlike the other 503s. The ingestor answers the same (docs/api.md).
MAY_BE_STORED = ("the write may be stored (too few replicas confirmed it in time, or its answer was lost); "
                 "resend it: a resent reading is stored once")

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
        self.wait_replicas = config.stream_wait_replicas
        self.wait_timeout_ms = config.stream_wait_timeout_ms
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
        except (redis.RedisError, RedisClusterException):  # the latter: a cluster with a slot unserved
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
        if self.wait_replicas:
            return self._append_replicated(key, fields)
        try:
            entry_id = self.redis.xadd(key, fields)
        except (redis.ConnectionError, redis.TimeoutError):
            # Received before it was sent: an entry Redis added has an id past this, clocks allowing.
            entry_id = self._find(key, fields, f"{max(0, received_ms - CLOCK_SLACK_MS)}-0")
            if entry_id is None:
                raise self._unreachable() from None
        except (redis.RedisError, RedisClusterException):
            raise self._unreachable() from None
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def _append_replicated(self, key: str, fields: dict[str, str]) -> str:
        """XADD, then WAIT for VT_STREAM_WAIT_REPLICAS on the same connection (WAIT counts the replicas that
        have this connection's writes): one round trip, a non-transactional pipeline, on the master of the
        key's slot in a cluster. Too few replicas in time: 503, and the entry stays; the client's resend is a
        duplicate the aggregator drops (rows are unique on device, metric and ts). A lost answer needs no
        search either: whether or not Redis has the entry, its replicas were not confirmed, so it is a 503."""
        try:
            pipe = node_client(self.redis, key).pipeline(transaction=False)
            pipe.xadd(key, fields)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            entry_id, replicas = pipe.execute()
        except (redis.RedisError, RedisClusterException) as exc:
            if is_cluster(self.redis) and not isinstance(exc, redis.TimeoutError):
                self._relearn_slots()
            # The XADD may have run before the connection failed: refused as unconfirmed, not as unwritten.
            raise self._unavailable(MAY_BE_STORED) from None
        if int(replicas) < self.wait_replicas:
            log.warning("an entry of %s reached %s of %d replicas within %d ms; answered 503", key, replicas,
                        self.wait_replicas, self.wait_timeout_ms)
            raise self._unavailable(MAY_BE_STORED)
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def _relearn_slots(self) -> None:
        """After a failover moved a slot (MOVED, or its old master gone): the cluster's layout for the next
        request; this one is refused like any unreachable write."""
        try:
            self.redis.nodes_manager.initialize()
        except Exception as exc:  # the cluster itself unreachable: the next request's turn
            log.warning("could not refresh the Redis Cluster layout: %s", exc)

    def _find(self, key: str, fields: dict[str, str], after: str) -> bytes | None:
        """The id of an entry holding exactly `fields` after `after`, asking until Redis answers (at most
        SETTLE_SECONDS); None when it is not there. When nobody can tell, 503 saying it may be stored."""
        want = {name.encode(): value.encode() for name, value in fields.items()}
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            try:
                entries = self.redis.xrange(key, min=after, max="+", count=SCAN_LIMIT)
                break
            except redis.RedisError:
                if time.monotonic() + SETTLE_PAUSE >= deadline:
                    log.warning("the answer to an XADD on %s was lost and Redis did not answer since", key)
                    raise self._unavailable(MAY_BE_STORED) from None
                time.sleep(SETTLE_PAUSE)
        found = next((entry_id for entry_id, got in entries if got == want), None)
        if found is None and len(entries) == SCAN_LIMIT:  # it may be past what was read
            log.warning("the answer to an XADD on %s was lost; not among the %d entries after it", key, SCAN_LIMIT)
            raise self._unavailable(MAY_BE_STORED)
        log.warning("the answer to an XADD on %s was lost; Redis %s the entry", key,
                    "holds" if found else "does not hold")
        return found
