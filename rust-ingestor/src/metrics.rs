//! Every metric of the service, in one place. Names carry the prefix
//! `visiontrack_ingestor_`; labels are bounded (route template, status, reason, op, shard).

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "visiontrack_ingestor_http_requests_total";
pub const REQUEST_DURATION: &str = "visiontrack_ingestor_http_request_duration_seconds";
pub const READINGS_ACCEPTED: &str = "visiontrack_ingestor_readings_accepted_total";
pub const READINGS_REJECTED: &str = "visiontrack_ingestor_readings_rejected_total";
pub const INGEST_REJECTED: &str = "visiontrack_ingestor_ingest_rejected_total";
pub const BATCH_SIZE: &str = "visiontrack_ingestor_batch_readings";
pub const ENTRY_REQUESTS: &str = "visiontrack_ingestor_stream_entry_requests";
pub const WRITES_IN_DOUBT: &str = "visiontrack_ingestor_writes_in_doubt_total";
pub const STREAM_WAIT_SHORT: &str = "visiontrack_ingestor_stream_wait_short_total";
pub const BACKPRESSURE: &str = "visiontrack_ingestor_backpressure_events_total";
pub const REDIS_ERRORS: &str = "visiontrack_ingestor_redis_errors_total";
pub const TOKEN_CACHE_HITS: &str = "visiontrack_ingestor_token_cache_hits_total";
pub const TOKEN_CACHE_MISSES: &str = "visiontrack_ingestor_token_cache_misses_total";
pub const STREAM_BACKLOG: &str = "visiontrack_ingestor_stream_backlog";
pub const MQTT_CONNECTIONS: &str = "visiontrack_ingestor_mqtt_connections";
pub const MQTT_CONNECTS: &str = "visiontrack_ingestor_mqtt_connects_total";
pub const MQTT_MESSAGES: &str = "visiontrack_ingestor_mqtt_messages_total";
pub const MQTT_PUBACK_LATENCY: &str = "visiontrack_ingestor_mqtt_puback_latency_seconds";
pub const MQTT_DISCONNECTS: &str = "visiontrack_ingestor_mqtt_disconnects_total";
pub const RATE_LIMIT_DEVICES: &str = "visiontrack_ingestor_rate_limit_devices";

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];
const ENTRY_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle
/// (tests build many routers in one process, so later calls reuse it). Call it
/// before recording anything: cached handles bind to the recorder of their first use.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ENTRY_REQUESTS.into()), ENTRY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MQTT_PUBACK_LATENCY.into()), LATENCY_BUCKETS))
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; its handle would be unused then.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "HTTP requests by route template and status");
    metrics::describe_histogram!(REQUEST_DURATION, metrics::Unit::Seconds, "HTTP request latency by route template");
    metrics::describe_counter!(READINGS_ACCEPTED, "Readings written to the stream");
    metrics::describe_counter!(READINGS_REJECTED, "Readings of parsed requests that were not written, by reason");
    metrics::describe_counter!(INGEST_REJECTED, "Ingest requests answered with an error, by reason");
    metrics::describe_histogram!(BATCH_SIZE, "Readings per accepted ingest request");
    metrics::describe_histogram!(ENTRY_REQUESTS, "Requests (or MQTT batches) written together in one stream entry");
    metrics::describe_counter!(
        WRITES_IN_DOUBT,
        "XADDs whose answer was lost, by what asking Redis found: stored, not_stored or unknown"
    );
    metrics::describe_counter!(
        STREAM_WAIT_SHORT,
        "Stream entries fewer replicas than VT_STREAM_WAIT_REPLICAS confirmed in time (their requests got 503)"
    );
    metrics::describe_counter!(BACKPRESSURE, "Requests refused because the stream backlog is over the high-water mark");
    metrics::describe_counter!(REDIS_ERRORS, "Failed or timed-out Redis commands, by operation");
    metrics::describe_counter!(TOKEN_CACHE_HITS, "Device-token lookups answered from the cache");
    metrics::describe_counter!(TOKEN_CACHE_MISSES, "Device-token lookups that went to Redis");
    metrics::describe_gauge!(STREAM_BACKLOG, "Last sampled backlog (lag + pending) per stream shard");
    metrics::describe_gauge!(MQTT_CONNECTIONS, "Open MQTT connections (CONNECT accepted)");
    metrics::describe_counter!(MQTT_CONNECTS, "MQTT CONNECTs by result");
    metrics::describe_counter!(MQTT_MESSAGES, "MQTT PUBLISHes by QoS and result");
    metrics::describe_histogram!(
        MQTT_PUBACK_LATENCY,
        metrics::Unit::Seconds,
        "From a QoS 1 PUBLISH read to its PUBACK written (the XADD in between)"
    );
    metrics::describe_counter!(MQTT_DISCONNECTS, "MQTT connections closed by the server or the client, by reason");
    metrics::describe_gauge!(RATE_LIMIT_DEVICES, "Devices whose rate-limit bucket is not full (held in memory)");
    gauge!(MQTT_CONNECTIONS).set(0.0);
    gauge!(RATE_LIMIT_DEVICES).set(0.0);
    // Refusals by rate limit, present at 0 so a dashboard's rate of them starts at once.
    for reason in ["rate_limited", "backfill_rate_limited"] {
        counter!(INGEST_REJECTED, "reason" => reason).increment(0);
    }
    // Present from the start at 0, so rates and alerts do not depend on a first event.
    for name in [READINGS_ACCEPTED, BACKPRESSURE, TOKEN_CACHE_HITS, TOKEN_CACHE_MISSES] {
        counter!(name).increment(0);
    }
    for op in REDIS_OPS {
        counter!(REDIS_ERRORS, "op" => op).increment(0);
    }
}

/// The `op` label values of [`REDIS_ERRORS`].
pub const REDIS_OPS: [&str; 4] = ["xadd", "token_lookup", "backlog", "ping"];

/// The route templates we serve; anything else is one bounded label value.
const ROUTES: [&str; 6] = ["/api/ingest", "/api/v1/{token}/telemetry", "/healthz", "/readyz", "/metrics", "unmatched"];
const STATUSES: [&str; 16] = [
    "200",
    "202",
    "400",
    "401",
    "403",
    "404",
    "405",
    "408",
    "413",
    "415",
    "429",
    "500",
    "503",
    "other_2xx_3xx",
    "other_4xx",
    "other_5xx",
];

/// Label index of a matched route template.
pub fn route_label(matched: Option<&str>) -> usize {
    matched.and_then(|m| ROUTES[..5].iter().position(|r| *r == m)).unwrap_or(5)
}

fn status_index(status: StatusCode) -> usize {
    match status.as_u16() {
        200 => 0,
        202 => 1,
        400 => 2,
        401 => 3,
        403 => 4,
        404 => 5,
        405 => 6,
        408 => 7,
        413 => 8,
        415 => 9,
        429 => 10,
        500 => 11,
        503 => 12,
        s if s < 400 => 13,
        s if s < 500 => 14,
        _ => 15,
    }
}

// Handles are looked up once per label set: the registry lookup (hashing and
// allocating the label list) was visible in the profile at full rate.
static REQUEST_COUNTERS: [[OnceLock<Counter>; STATUSES.len()]; ROUTES.len()] =
    [const { [const { OnceLock::new() }; STATUSES.len()] }; ROUTES.len()];
static REQUEST_HISTOGRAMS: [OnceLock<Histogram>; ROUTES.len()] = [const { OnceLock::new() }; ROUTES.len()];
static ACCEPTED: OnceLock<Counter> = OnceLock::new();
static BATCH: OnceLock<Histogram> = OnceLock::new();
static CACHE_HITS: OnceLock<Counter> = OnceLock::new();
static CACHE_MISSES: OnceLock<Counter> = OnceLock::new();

pub fn request(route: usize, status: StatusCode, elapsed: Duration) {
    let s = status_index(status);
    REQUEST_COUNTERS[route][s]
        .get_or_init(|| counter!(REQUESTS, "route" => ROUTES[route], "status" => STATUSES[s]))
        .increment(1);
    REQUEST_HISTOGRAMS[route]
        .get_or_init(|| histogram!(REQUEST_DURATION, "route" => ROUTES[route]))
        .record(elapsed.as_secs_f64());
}

pub fn accepted(readings: usize) {
    ACCEPTED.get_or_init(|| counter!(READINGS_ACCEPTED)).increment(readings as u64);
    #[allow(clippy::cast_precision_loss)]
    BATCH.get_or_init(|| histogram!(BATCH_SIZE)).record(readings as f64);
}

static ENTRY: OnceLock<Histogram> = OnceLock::new();

/// One XADD of the appender, carrying `requests` requests' readings.
pub fn entry_requests(requests: usize) {
    #[allow(clippy::cast_precision_loss)]
    ENTRY.get_or_init(|| histogram!(ENTRY_REQUESTS)).record(requests as f64);
}

/// An XADD whose answer was lost, once Redis was asked what became of it.
pub fn write_in_doubt(settled: crate::in_doubt::Settled) {
    use crate::in_doubt::Settled;
    let outcome = match settled {
        Settled::Stored => "stored",
        Settled::NotStored => "not_stored",
        Settled::Unknown => "unknown",
    };
    counter!(WRITES_IN_DOUBT, "outcome" => outcome).increment(1);
}

/// A stream entry that fewer replicas than `VT_STREAM_WAIT_REPLICAS` confirmed in time (its requests got 503).
pub fn stream_wait_short() {
    counter!(STREAM_WAIT_SHORT).increment(1);
}

/// An ingest request answered with an error; `readings` when the body was parsed that far.
pub fn rejected(reason: &'static str, readings: usize) {
    counter!(INGEST_REJECTED, "reason" => reason).increment(1);
    if readings > 0 {
        counter!(READINGS_REJECTED, "reason" => reason).increment(readings as u64);
    }
}

pub fn backpressure() {
    counter!(BACKPRESSURE).increment(1);
}

pub fn redis_error(op: &'static str) {
    counter!(REDIS_ERRORS, "op" => op).increment(1);
}

pub fn token_cache(hit: bool) {
    if hit {
        CACHE_HITS.get_or_init(|| counter!(TOKEN_CACHE_HITS)).increment(1);
    } else {
        CACHE_MISSES.get_or_init(|| counter!(TOKEN_CACHE_MISSES)).increment(1);
    }
}

pub fn stream_backlog(shard: usize, backlog: u64) {
    #[allow(clippy::cast_precision_loss)]
    gauge!(STREAM_BACKLOG, "shard" => shard.to_string()).set(backlog as f64);
}

/// Results of an MQTT CONNECT (the `result` label).
pub const MQTT_CONNECT_RESULTS: [&str; 8] = [
    "accepted",
    "bad_credentials",
    "not_authorized",
    "unavailable",
    "over_limit",
    "timeout",
    "protocol_error",
    "tls_failed",
];
/// Results of an MQTT PUBLISH (the `result` label).
pub const MQTT_MESSAGE_RESULTS: [&str; 9] = [
    "accepted",
    "invalid",
    "too_large",
    "topic",
    "backpressure",
    "unavailable",
    "qos_refused",
    "rate_limited",
    "backfill_rate_limited",
];

static MQTT_MESSAGE_COUNTERS: [[OnceLock<Counter>; MQTT_MESSAGE_RESULTS.len()]; 3] =
    [const { [const { OnceLock::new() }; MQTT_MESSAGE_RESULTS.len()] }; 3];
static MQTT_PUBACK: OnceLock<Histogram> = OnceLock::new();
static MQTT_OPEN: OnceLock<metrics::Gauge> = OnceLock::new();

/// `result` is an index into [`MQTT_CONNECT_RESULTS`].
pub fn mqtt_connect(result: usize) {
    counter!(MQTT_CONNECTS, "result" => MQTT_CONNECT_RESULTS[result]).increment(1);
}

/// `qos` 0–2, `result` an index into [`MQTT_MESSAGE_RESULTS`].
pub fn mqtt_messages(qos: u8, result: usize, n: u64) {
    let q = usize::from(qos.min(2));
    MQTT_MESSAGE_COUNTERS[q][result]
        .get_or_init(|| counter!(MQTT_MESSAGES, "qos" => ["0", "1", "2"][q], "result" => MQTT_MESSAGE_RESULTS[result]))
        .increment(n);
}

pub fn mqtt_puback(elapsed: Duration) {
    MQTT_PUBACK.get_or_init(|| histogram!(MQTT_PUBACK_LATENCY)).record(elapsed.as_secs_f64());
}

/// One connection more (`1.0`) or fewer (`-1.0`).
pub fn mqtt_open(delta: f64) {
    MQTT_OPEN.get_or_init(|| gauge!(MQTT_CONNECTIONS)).increment(delta);
}

pub fn mqtt_disconnect(reason: &'static str) {
    counter!(MQTT_DISCONNECTS, "reason" => reason).increment(1);
}

/// Devices the rate limiter holds a bucket for.
pub fn rate_limit_devices(n: usize) {
    #[allow(clippy::cast_precision_loss)]
    gauge!(RATE_LIMIT_DEVICES).set(n as f64);
}
