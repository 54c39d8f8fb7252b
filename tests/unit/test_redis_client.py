"""The one Redis client factory: a plain client or a Redis Cluster one, with the options given."""
from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from stack.servers import free_port
from visiontrack import config, redis_client


def test_a_plain_client_by_default_with_the_options_given():
    client = redis_client.from_config(config.load({"REDIS_URL": "redis://127.0.0.1:1/3"}), socket_timeout=7,
                                      health_check_interval=30)
    assert type(client) is redis.Redis and not redis_client.is_cluster(client)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 7 and kwargs["db"] == 3 and kwargs["health_check_interval"] == 30
    assert redis_client.node_client(client, "any-key") is client  # WAIT's connection: the client's own


def test_cluster_mode_builds_a_cluster_client():
    """A cluster client learns the slots from its seed node as it is made: with none answering it refuses to
    be made (the scale tests make one on a real cluster)."""
    cfg = config.load({"REDIS_URL": f"redis://127.0.0.1:{free_port()}", "VT_REDIS_CLUSTER": "true"})
    with pytest.raises((RedisClusterException, redis.ConnectionError)):
        redis_client.from_config(cfg, socket_timeout=1, socket_connect_timeout=1, health_check_interval=30)
    assert issubclass(RedisCluster, redis_client.Client.__args__[1])
