"""Where the ingestor keeps its per-device counters in Redis, and how they are read back.

The ingestor adds to them (rust-ingestor/src/device_stats.rs, about once a second per server thread); the
registry reads them (GET /api/devices/{id}/stats); the aggregator's purge deletes them with the device.
Layout (docs/contracts.md, section 5), per device, under `vt:device-stats:<id>` (not under the stream key, whose
pattern the Redis exporter scans for streams):

- `:total`, a hash since registration: `received`, `accepted`, `readings`, `rejected:<reason>` (counts),
  `last_accepted_ms` and `newest_ts_ms` (epoch ms, only ever raised);
- `:m:<epoch minute>`, a hash of the same counts for one minute, expiring after 65 minutes.
"""
from __future__ import annotations

MINUTES = 60  # the window of "last hour": this minute and the 59 before it
MINUTE_TTL_MINUTES = 65  # the ingestor's expiry of a minute hash (MINUTE_TTL_SECONDS), with some slack


PREFIX = "vt:device-stats"


def prefix(device_id: int) -> str:
    return f"{PREFIX}:{device_id}"


def total_key(device_id: int) -> str:
    return f"{prefix(device_id)}:total"


def minute_key(device_id: int, minute: int) -> str:
    return f"{prefix(device_id)}:m:{minute}"


def window(now_ms: int) -> list[int]:
    """The epoch minutes of the last hour, oldest first."""
    current = now_ms // 60_000
    return list(range(current - MINUTES + 1, current + 1))


def counts(hashes: list[dict]) -> dict:
    """Sums hashes of counts (bytes or str keys and values) into
    {"received", "accepted", "rejected": {reason: n}, "readings"}."""
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
    """Every key the device's counters may be under now (the minute hashes that have not expired)."""
    current = now_ms // 60_000
    return [total_key(device_id)] + [minute_key(device_id, m) for m in range(current - MINUTE_TTL_MINUTES, current + 2)]
