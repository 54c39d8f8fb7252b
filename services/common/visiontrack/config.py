"""Every setting of the Python parts, read from the environment in one place.

`SETTINGS` is the single list: the table of docs/settings.md, the Helm chart's cross-checks and
`visiontrack settings` are all generated from it. A missing or malformed value stops the process at start with a
message naming the variable (`ConfigError`). Checks across settings belong to the part that uses them and
run at its start (`check_retention`: the aggregator), so no part refuses to start over another's settings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# Which parts read a setting. The Rust ingestor reads some of these variables too, with the same default and range
# (tests/contract/test_shared_settings.py compares them with its `--print-settings`); it has its own besides.
INGESTOR = "ingestor"
ALL_PARTS = frozenset({"registry", "query", "aggregator", "migrate", INGESTOR})
WEB = frozenset({"registry", "query"})
DB_PARTS = frozenset({"registry", "query", "aggregator", "migrate"})
REDIS_PARTS = frozenset({"registry", "query", "aggregator", INGESTOR})
WRITERS = frozenset({"query", INGESTOR})  # the telemetry stream's writers: POST /api/telemetry/ and the ingestor


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class IntRange:
    """A parser: an integer from `lo` to `hi` (None: no bound)."""

    lo: int | None = None
    hi: int | None = None

    def __call__(self, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be an integer, got {raw!r}") from None
        if self.lo is not None and value < self.lo:
            raise ValueError(f"must be >= {self.lo}, got {value}")
        if self.hi is not None and value > self.hi:
            raise ValueError(f"must be <= {self.hi}, got {value}")
        return value


def _float(lo: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if not value >= lo:
            raise ValueError(f"must be >= {lo}, got {raw!r}")
        return value

    return parse


def _token_list(raw: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in raw.split(",") if t.strip())
    if any(len(t) < 16 for t in tokens):
        raise ValueError("every token must be at least 16 characters")
    return tokens


@dataclass(frozen=True)
class Choice:
    """A parser: one of `options`, in any case."""

    options: tuple[str, ...]

    def __call__(self, raw: str) -> str:
        value = raw.strip().lower()
        if value not in self.options:
            raise ValueError(f"must be one of {', '.join(self.options)}, got {raw!r}")
        return value


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if not value.split("://", 1)[0] in schemes or "://" not in value:
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    return parse


def _optional(parse: Callable[[str], str]) -> Callable[[str], str]:
    """`parse`, or "" for an empty value (the setting then falls back to another, see its help)."""
    def parse_optional(raw: str) -> str:
        return "" if not raw.strip() else parse(raw)

    return parse_optional


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: required
    parse: Callable[[str], Any]
    parts: frozenset[str]
    help: str
    secret: bool = False

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def attr(self) -> str:
        return self.name.removeprefix("VT_").lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "postgresql://visiontrack@127.0.0.1:5432/visiontrack", _url("postgresql", "postgres"),
            DB_PARTS, "Postgres connection URL.", secret=True),
    Setting("REDIS_URL", "redis://127.0.0.1:6379/0", _url("redis", "rediss", "unix"),
            REDIS_PARTS, "Redis URL: the telemetry stream, the token index and, unless VT_BROKER_URL is set, "
            "the Celery broker.", secret=True),
    Setting("VT_REDIS_CLUSTER", "false", _bool, REDIS_PARTS,
            "REDIS_URL names a node of a Redis Cluster: use cluster-aware clients (the broker stays on VT_BROKER_URL)."),
    Setting("VT_BROKER_URL", "", _optional(_url("redis", "rediss", "unix")), frozenset({"aggregator"}),
            "Redis URL of Celery's broker; empty: REDIS_URL. Required with VT_REDIS_CLUSTER=true: Celery's "
            "Redis transport (kombu) does not support Redis Cluster.", secret=True),
    Setting("VT_DATABASE_READ_URL", "", _optional(_url("postgresql", "postgres")), frozenset({"query"}),
            "Postgres URL of a hot standby the query service reads telemetry and alerts from; empty: "
            "DATABASE_URL. The registry always reads the primary (read-your-writes).", secret=True),
    Setting("VT_ADMIN_TOKENS", "", _token_list, WEB,
            "Comma-separated operator API tokens with full access (each at least 16 characters).", secret=True),
    Setting("VT_READER_TOKENS", "", _token_list, WEB,
            "Comma-separated operator API tokens allowed only GET calls.", secret=True),
    Setting("VT_LOG_LEVEL", "info", Choice(("debug", "info", "warning", "error")), ALL_PARTS, "Log level."),
    Setting("VT_LOG_FORMAT", "text", Choice(("text", "json")), ALL_PARTS, "Log lines as text or JSON."),
    Setting("VT_HTTP_BIND", "0.0.0.0:8000", _text, WEB, "Address gunicorn listens on."),
    Setting("VT_HTTP_WORKERS", "2", IntRange(1, 64), WEB, "gunicorn worker processes."),
    Setting("VT_HTTP_THREADS", "4", IntRange(1, 64), WEB, "Threads per gunicorn worker."),
    Setting("VT_DB_POOL_SIZE", "4", IntRange(1, 100), WEB, "Postgres connections per web worker process."),
    Setting("VT_QUERY_TIMEOUT_MS", "5000", IntRange(100), WEB, "Statement timeout of API queries, ms."),
    Setting("VT_STREAM_KEY", "vt:telemetry", _text, REDIS_PARTS - {"registry"}, "Telemetry stream key (prefix when sharded)."),
    Setting("VT_STREAM_SHARDS", "1", IntRange(1, 1024), REDIS_PARTS - {"registry"}, "Number of stream shards (by device id)."),
    Setting("VT_STREAM_GROUP", "aggregators", _text, REDIS_PARTS - {"registry"}, "Consumer group of the aggregators."),
    Setting("VT_STREAM_HIGH_WATER", "100000", IntRange(1, 2**64 - 1), WRITERS,
            "Backlog (entries per shard) above which writers answer 503."),
    Setting("VT_STREAM_WAIT_REPLICAS", "0", IntRange(0, 16), WRITERS,
            "Replicas that must have each stream entry before it is acknowledged (Redis WAIT); 0 = do not wait."),
    Setting("VT_STREAM_WAIT_TIMEOUT_MS", "500", IntRange(1, 60_000), WRITERS,
            "How long an append waits for VT_STREAM_WAIT_REPLICAS before the request is refused (503)."),
    Setting("VT_BACKLOG_CHECK_MS", "250", IntRange(1, 60_000), WRITERS, "How often a writer samples the stream backlog, ms."),
    Setting("VT_RETRY_AFTER_SECONDS", "1", IntRange(1, 3600), WRITERS, "Retry-After sent with 503 answers."),
    Setting("VT_DEAD_LETTER_KEY", "vt:telemetry:dead", _text, frozenset({"aggregator"}), "Dead-letter stream key."),
    Setting("VT_TOKEN_INDEX_KEY", "vt:device-tokens", _text, REDIS_PARTS, "Redis hash of device-token hashes."),
    Setting("VT_MAX_BODY_BYTES", "1048576", IntRange(64, 2**30), WRITERS, "Largest telemetry request body, bytes (413 beyond)."),
    Setting("VT_MAX_READINGS", "10000", IntRange(1, 10_000_000), WRITERS, "Most readings in one request (400 beyond)."),
    Setting("VT_MAX_FUTURE_SKEW", "300", IntRange(0, 31_536_000), WRITERS, "How far in the future a reading may be, seconds."),
    Setting("VT_RETENTION_DAYS", "30", IntRange(1, 36500), WRITERS | {"aggregator"},
            "Raw telemetry kept this many days; older readings are refused."),
    Setting("VT_PARTITIONS_AHEAD_DAYS", "3", IntRange(1, 60), frozenset({"aggregator", "migrate"}),
            "Daily telemetry partitions created ahead of time."),
    Setting("VT_BATCH_ENTRIES", "10000", IntRange(1, 100000), frozenset({"aggregator"}),
            "Most stream entries read in one batch (one Postgres transaction); entries of one reading need many "
            "per batch for their rollups to be cheap."),
    Setting("VT_BATCH_READINGS", "100000", IntRange(1, 1000000), frozenset({"aggregator"}),
            "Readings a batch aims at; the entries read per batch follow the entries' average size. A batch "
            "upserts a rollup row per series and minute or hour it touches, so bigger batches share them out."),
    Setting("VT_BATCH_MAX_WAIT_MS", "50", IntRange(1, 10_000), frozenset({"aggregator"}),
            "Longest a batch waits for more entries before it is stored, counted from its first entry; a busy "
            "stream fills batches by size first, so this bounds how long a reading waits on a quiet one."),
    Setting("VT_STANDBY_CONFIRM_SECONDS", "0", _float(0.0), frozenset({"aggregator"}),
            "Acknowledge a batch's stream entries only once a Postgres standby has flushed its commit, waiting at "
            "most this long (then the batch is stored again later); 0: once the primary committed. For an "
            "asynchronous standby: a failover to it then loses no acknowledged reading."),
    Setting("VT_LIVE_DRAIN", "true", _bool, frozenset({"aggregator"}),
            "One drain per shard waits on the stream for new entries (a blocking read) instead of returning "
            "when it is empty, so readings are stored within VT_BATCH_MAX_WAIT_MS of arriving; it takes one "
            "worker process per shard, never a node's last. Off: readings wait for beat's next drain."),
    Setting("VT_DRAIN_BUDGET_SECONDS", "10", _float(0.1), frozenset({"aggregator"}),
            "How long one drain task runs before handing back to Celery."),
    Setting("VT_DRAIN_INTERVAL_SECONDS", "1", _float(0.1), frozenset({"aggregator"}),
            "How often beat schedules a drain of every shard (a listening drain hands over to the next by "
            "itself; these ticks start one after a crash and help with a backlog)."),
    Setting("VT_CLAIM_IDLE_MS", "30000", IntRange(100), frozenset({"aggregator"}),
            "Pending entries idle this long are claimed from a dead consumer."),
    Setting("VT_MAX_DELIVERIES", "5", IntRange(1), frozenset({"aggregator"}),
            "Deliveries after which a failing entry is dead-lettered."),
    Setting("VT_TRIM_INTERVAL_SECONDS", "5", _float(0.1), frozenset({"aggregator"}), "How often the stream is trimmed."),
    Setting("VT_TOKEN_INDEX_REPAIR_SECONDS", "60", _float(1), frozenset({"aggregator"}),
            "How often the token index is rebuilt from Postgres."),
    Setting("VT_WORKER_CONCURRENCY", "2", IntRange(1, 64), frozenset({"aggregator"}), "Celery worker processes."),
    Setting("VT_METRICS_PORT", "9100", IntRange(0, 65535), frozenset({"aggregator"}),
            "Port of the aggregator's /metrics (0: off)."),
    Setting("VT_BEAT_SCHEDULE_FILE", "/tmp/visiontrack-beat-schedule", _text, frozenset({"aggregator"}),
            "Where Celery beat keeps its schedule state."),
    Setting("VT_ROLLUPS_ENABLED", "true", _bool, frozenset({"aggregator"}),
            "Maintain rollups, latest values and last_seen_at with every batch (turn off only to measure their "
            "cost: aggregates, latest and alerts depend on them)."),
    Setting("VT_DEVICE_STATS_ENABLED", "true", _bool, frozenset({"aggregator"}),
            "Count the readings stored per device with every batch, for GET /api/devices/{id}/stats (turn off "
            "only to measure its cost: the endpoint's stored counts then stay at zero)."),
    Setting("VT_ROLLUP_1M_RETENTION_DAYS", "90", IntRange(1, 36500), frozenset({"aggregator"}),
            "1-minute rollups kept this many days (whole daily partitions dropped)."),
    Setting("VT_ROLLUP_1H_RETENTION_DAYS", "730", IntRange(1, 36500), frozenset({"aggregator"}),
            "1-hour rollups kept at least this many days (whole monthly partitions dropped)."),
    Setting("VT_RETENTION_INTERVAL_SECONDS", "3600", _float(10), frozenset({"aggregator"}),
            "How often expired raw and rollup partitions are dropped."),
    Setting("VT_ALERT_EVAL_SECONDS", "5", _float(0.5), frozenset({"aggregator"}),
            "How often alert rules are evaluated."),
    Setting("VT_WEBHOOK_TIMEOUT_SECONDS", "5", _float(0.1), frozenset({"aggregator"}),
            "Timeout of one alert webhook call."),
    Setting("VT_WEBHOOK_MAX_RETRIES", "8", IntRange(0, 100), frozenset({"aggregator"}),
            "Retries of a failed alert webhook call, with exponential backoff."),
    Setting("VT_WEBHOOK_BACKOFF_SECONDS", "2", IntRange(1, 3600), frozenset({"aggregator"}),
            "First retry delay of a failed webhook call; it doubles per retry, up to 240 s."),
    Setting("VT_WEBHOOK_SWEEP_SECONDS", "30", _float(0.5), frozenset({"aggregator"}),
            "How often the alert webhook outbox is swept for calls still pending after the grace period."),
    Setting("VT_WEBHOOK_SWEEP_GRACE_SECONDS", "60", _float(1), frozenset({"aggregator"}),
            "How long an alert webhook call, and each of its retries, has to start before the sweep enqueues "
            "it again (at-least-once delivery: keep it above the Celery queue's usual delay)."),
    Setting("VT_AGGREGATE_MAX_BUCKETS", "50000", IntRange(1, 10_000_000), frozenset({"query"}),
            "Most buckets one aggregate query may return (400 beyond)."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """The parsed settings; attribute names are the variable names without `VT_`, lower-case."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, attr: str) -> Any:
        try:
            return self.values[attr]
        except KeyError:
            raise AttributeError(attr) from None

    def replace(self, **changes: Any) -> "Config":
        unknown = set(changes) - set(self.values)
        if unknown:
            raise AttributeError(f"unknown settings: {sorted(unknown)}")
        return Config({**self.values, **changes})

    @property
    def stream_keys(self) -> list[str]:
        from .stream import shard_keys

        return shard_keys(self.stream_key, self.stream_shards)


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Parse every setting; raise ConfigError naming each bad or missing variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for setting in SETTINGS:
        raw = env.get(setting.name)
        if raw is None or raw == "":
            if setting.required:
                problems.append(f"{setting.name} is required ({setting.help})")
                continue
            raw = setting.default
        try:
            values[setting.attr] = setting.parse(raw)
        except ValueError as exc:
            problems.append(f"{setting.name} {exc}")
    if problems:
        raise ConfigError("bad configuration: " + "; ".join(problems))
    return Config(values)


def check_retention(cfg: Config) -> None:
    """The aggregator's check at its start (worker and beat): raise ConfigError unless VT_RETENTION_DAYS <=
    VT_ROLLUP_1M_RETENTION_DAYS <= VT_ROLLUP_1H_RETENTION_DAYS.

    Aggregates read the 1-hour rollups for whole hours and the 1-minute ones for whole minutes: a rollup
    dropped before the rows it sums would answer "no data" where there is some. Only the aggregator applies
    these settings (it drops the partitions), so only it checks them; load() alone does not."""
    raw, minutes, hours = cfg.retention_days, cfg.rollup_1m_retention_days, cfg.rollup_1h_retention_days
    if raw <= minutes <= hours:
        return
    raise ConfigError(f"bad configuration: VT_RETENTION_DAYS ({raw}) <= VT_ROLLUP_1M_RETENTION_DAYS ({minutes}) "
                      f"<= VT_ROLLUP_1H_RETENTION_DAYS ({hours}) must hold: rollups outlive what they sum")


def broker_url(cfg: Config) -> str:
    """Celery's broker (worker and beat check it at start): VT_BROKER_URL, else REDIS_URL. Raise ConfigError
    when Redis is a cluster and VT_BROKER_URL is empty: kombu's Redis transport cannot use a cluster."""
    if cfg.broker_url:
        return cfg.broker_url
    if cfg.redis_cluster:
        raise ConfigError("bad configuration: VT_BROKER_URL is required with VT_REDIS_CLUSTER=true (Celery's "
                          "broker cannot be a Redis Cluster: name a plain Redis)")
    return cfg.redis_url


def read_database_url(cfg: Config) -> str:
    """Where the query service's reads go: VT_DATABASE_READ_URL, else DATABASE_URL."""
    return cfg.database_read_url or cfg.database_url


def setting(name: str) -> Setting:
    return _BY_NAME[name]
