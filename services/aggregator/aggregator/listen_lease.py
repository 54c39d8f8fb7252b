"""Who may listen on a shard: one listening drain per shard, and never every worker process of a node.

A listening drain holds its worker process for its whole budget, waiting on the stream. One per shard is
enough (more would only split its batches), and a node must keep a process free for the other tasks (alert
evaluation, trims, webhooks), so a drain listens only with two leases: the shard's, and one of the node's
VT_WORKER_CONCURRENCY - 1 listener slots. Both are Redis keys that expire, so a worker killed while
listening frees them by itself; until then the shard is still drained by beat's ticks, without listening.
"""
from __future__ import annotations

import uuid

import redis

from visiontrack.cluster_keys import companion

# Deletes a lease only if it is still ours (it may have expired and been taken by another drain since).
_RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


def shard_lease_key(stream_key: str) -> str:
    """The shard's lease, in the shard's own cluster slot (visiontrack.cluster_keys), beside its stream."""
    return companion(stream_key, "listener")


class ListenLease:
    def __init__(self, client: redis.Redis, stream_key: str, node: str, slots: int, ttl_seconds: float):
        self.redis = client
        self.shard_key = shard_lease_key(stream_key)
        self.slot_keys = [f"vt:aggregator:listeners:{node}:{i}" for i in range(max(0, slots))]
        self.ttl_ms = max(1000, int(ttl_seconds * 1000))
        self.token = uuid.uuid4().hex
        self.held: list[str] = []

    def acquire(self) -> bool:
        """Take the shard's lease and a slot of this node, or neither."""
        if not self.slot_keys or not self.redis.set(self.shard_key, self.token, nx=True, px=self.ttl_ms):
            return False
        for slot in self.slot_keys:
            if self.redis.set(slot, self.token, nx=True, px=self.ttl_ms):
                self.held = [self.shard_key, slot]
                return True
        self._release([self.shard_key])
        return False

    def taken_by_another(self) -> bool:
        """Whether another drain listens on the shard (asked after acquire() refused)."""
        return not self.held and bool(self.redis.exists(self.shard_key))

    def release(self) -> None:
        if self.held:
            self._release(self.held)
            self.held = []

    def _release(self, keys: list[str]) -> None:
        # One key per call: in Redis Cluster the shard's key and the node's slot may live in different slots.
        for key in keys:
            self.redis.eval(_RELEASE, 1, key, self.token)
