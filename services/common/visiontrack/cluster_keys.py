"""Names of keys that must share a Redis Cluster hash slot with another key.

Redis Cluster refuses a command or MULTI whose keys hash to different slots (CROSSSLOT). Only the part of a
key between its first `{` and the next `}` is hashed when that part is not empty (its hash tag), so a
helper key named `{K}:suffix` lands in the slot of K whenever K has no hash tag of its own; a K that has
one (a stream shard, `vt:telemetry:{3}`) keeps it in `K:suffix`. Every helper key is named here, one way.
"""
from __future__ import annotations


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes when it is not the whole key; None when it is."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:  # no closing brace, or `{}`: the whole key is hashed
        return None
    return key[start + 1:end]


def companion(key: str, suffix: str) -> str:
    """A key for `suffix` that hashes to the same slot as `key` (in a single Redis: just a distinct name).
    ValueError for a key with a `}` but no hash tag: no other key shares its slot by construction."""
    if hash_tag(key) is not None:
        return f"{key}:{suffix}"
    if "}" in key:
        raise ValueError(f"no key can be named to share the Redis Cluster slot of {key!r}: give it a hash tag "
                         "({...}) or no braces")
    return f"{{{key}}}:{suffix}"
