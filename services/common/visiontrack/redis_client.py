"""The one way every Python part connects to Redis: a plain client, or a Redis Cluster one with
VT_REDIS_CLUSTER (REDIS_URL then names any node; the client learns the others and follows failovers)."""
from __future__ import annotations

from typing import Any, Union

import redis
from redis.cluster import RedisCluster

Client = Union[redis.Redis, RedisCluster]


def connect(url: str, cluster: bool = False, **options: Any) -> Client:
    """A client on `url` with `options` (timeouts, health checks, retry), in either mode."""
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def from_config(config, **options: Any) -> Client:
    """The process's client from REDIS_URL and VT_REDIS_CLUSTER."""
    return connect(config.redis_url, config.redis_cluster, **options)


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


def node_client(client: Client, key: str) -> redis.Redis:
    """A plain client on the connections that serve `key`: the client itself, or in a cluster the master
    holding the key's slot (for commands that must follow a write on its own connection, like WAIT)."""
    if not is_cluster(client):
        return client
    return client.get_node_from_key(key).redis_connection
