"""Where the ingestor keeps its per-device counters in Redis, and how they are read back.

The ingestor adds to them (rust-ingestor/src/device_stats.rs, about once a second per server thread); the
registry reads them (GET /api/devices/{id}/stats); the aggregator's purge deletes them with the device.
Layout (docs/contracts.md, section 5), per device, under `vt:device-stats:<id>` (not under the stream key,
whose pattern the Redis exporter scans for streams):

- `:total`, a hash since registration: `received`, `accepted`, `readings`, `rejected:<reason>` (counts),
  `last_accepted_ms` and `newest_ts_ms` (epoch ms, only ever raised);
- `:b:<epoch bucket>`, a hash of the same counts for one 5-minute bucket (epoch ms // 300,000), expiring
  65 minutes after its last write.
"""
from __future__ import annotations

PREFIX = "vt:device-stats"
BUCKET_MS = 300_000  # the ingestor's BUCKET_MS; device_stats rows use the same buckets
BUCKETS = 12  # the window of "last hour": this bucket and the 11 before it
BUCKET_TTL_MS = 3_900_000  # the ingestor's expiry of a bucket hash after its last write


def prefix(device_id: int) -> str:
    return f"{PREFIX}:{device_id}"


def total_key(device_id: int) -> str:
    return f"{prefix(device_id)}:total"


def bucket_key(device_id: int, bucket: int) -> str:
    return f"{prefix(device_id)}:b:{bucket}"


def window(now_ms: int) -> list[int]:
    """The epoch buckets of the last hour, oldest first."""
    current = now_ms // BUCKET_MS
    return list(range(current - BUCKETS + 1, current + 1))


def counts(hashes: list[dict]) -> dict:
    """Sums hashes of counts (bytes or str keys and values) into
    {"received", "accepted", "readings", "rejected": {reason: n}}."""
    out = {"received": 0, "accepted": 0, "readings": 0, "rejected": {}}
    for h in hashes:
        for raw_field, raw_value in h.items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            if field in ("received", "accepted", "readings"):
                out[field] += int(raw_value)
            elif field.startswith("rejected:"):
                reason = field[len("rejected:"):]
                out["rejected"][reason] = out["rejected"].get(reason, 0) + int(raw_value)
    out["rejected"] = dict(sorted(out["rejected"].items()))
    return out


def all_keys(device_id: int, now_ms: int) -> list[str]:
    """Every key the device's counters may be under now (the bucket hashes that have not expired)."""
    current = now_ms // BUCKET_MS
    oldest = (now_ms - BUCKET_TTL_MS) // BUCKET_MS - 1
    return [total_key(device_id)] + [bucket_key(device_id, b) for b in range(oldest, current + 2)]
