"""Every command of the Python parts that names several keys keeps them in one Redis Cluster hash slot
(a cluster refuses the others with CROSSSLOT), checked with redis-py's own slot function."""
from __future__ import annotations

import pytest
from redis.crc import key_slot

from aggregator.listen_lease import shard_lease_key
from visiontrack import config
from visiontrack.cluster_keys import companion, hash_tag
from visiontrack.stream import shard_keys
from visiontrack.tokens import changed_key, scratch_key


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize("key,tag", [("vt:device-tokens", None), ("vt:telemetry:{3}", "3"), ("a{}b", None),
                                     ("a{b", None), ("x{y}z{w}", "y")])
def test_hash_tags_are_read_as_redis_reads_them(key, tag):
    assert hash_tag(key) == tag


@pytest.mark.parametrize("key", ["vt:device-tokens", "vt:telemetry", "vt:telemetry:{7}", "half{open"])
def test_a_companion_key_shares_the_slot_of_its_key(key):
    helper = companion(key, "changed")
    assert helper != key and slot(helper) == slot(key)


@pytest.mark.parametrize("key", ["odd{}key", "a}b", "a{}b{c}"])
def test_a_key_no_name_can_share_a_slot_with_is_refused(key):
    with pytest.raises(ValueError, match="hash tag"):
        companion(key, "changed")


def test_companions_are_named_one_way():
    assert companion("vt:device-tokens", "changed") == "{vt:device-tokens}:changed"
    assert companion("vt:telemetry:{3}", "listener") == "vt:telemetry:{3}:listener"


def _multi_key_commands(cfg) -> dict[str, list[str]]:
    """Every command or MULTI of the Python side that touches several keys at once, with those keys. (Multi-key
    commands whose keys may span slots are left out on purpose: the purge's DEL of a device's counters, which
    redis-py's RedisCluster sends once per slot; the dead letter's XADD and the shard's XACK, two steps.)"""
    index = cfg.token_index_key
    scratch = scratch_key(index)
    commands = {
        # visiontrack.tokens.swap_in: RENAME, then a MULTI of the swap
        "token index swap RENAME": [scratch, index],
        "token index swap MULTI": [scratch, index, changed_key(index)],
        # registry.device_store._index: the entries' change and tokens.record_change in one MULTI
        "registry index change MULTI": [index, changed_key(index)],
    }
    for key in cfg.stream_keys:  # each lease's EVAL names one key; kept beside its shard all the same
        commands[f"listen lease of {key}"] = [key, shard_lease_key(key)]
    return commands


@pytest.mark.parametrize("env", [{}, {"VT_STREAM_SHARDS": "8"}, {"VT_TOKEN_INDEX_KEY": "tenant-a:tokens"}],
                         ids=["defaults", "8-shards", "own-index-key"])
def test_every_multi_key_command_stays_in_one_slot(env):
    cfg = config.load(env)
    crossing = {name: sorted({slot(k) for k in keys}) for name, keys in _multi_key_commands(cfg).items()
                if len({slot(k) for k in keys}) > 1}
    assert not crossing, f"commands whose keys span slots: {crossing}"


def test_stream_shards_spread_over_slots():
    """The shards are meant to spread over the cluster's masters: each its own slot."""
    keys = shard_keys("vt:telemetry", 8)
    assert len({slot(k) for k in keys}) == 8
