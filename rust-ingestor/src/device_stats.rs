//! Per-device accounting: how many requests and PUBLISHes each device sent,
//! how many were accepted (and their readings), and why the others were
//! refused. The registry serves the sums (`GET /api/devices/{id}/stats`).
//!
//! The hot path only adds to counters of its own server thread (a thread-local
//! map, no lock, no Redis round trip); each server thread flushes its deltas
//! about once a second, as one `EVAL` (`flush_forever`). Counts are accounting,
//! not data: a crash loses at most the last second of them. Key layout and
//! reasons: `docs/contracts.md`, section 5.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use redis::cluster_routing::Slot;

use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::Reading;

/// How often a server thread flushes its counters.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Span of the short buckets: the registry sums the twelve that make the last
/// hour. Five minutes, not one: a device active all hour then holds 12 small
/// hashes (about 2 KB of Redis), not 60.
pub const BUCKET_MS: i64 = 300_000;
/// Lifetime of a bucket's hash after its last write: past the hour it is summed in.
pub const BUCKET_TTL_SECONDS: u64 = 3_900;
/// Most hashes per `EVAL`: a script holds Redis while it runs.
const KEYS_PER_EVAL: usize = 1000;
/// `EVAL`s of one flush in flight at once (on a cluster, one per slot touched).
const CONCURRENT_EVALS: usize = 64;

/// The counters of one device in one bucket.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub accepted: u64,
    pub readings: u64,
    /// Refusal reason → messages, few distinct per device.
    pub rejected: Vec<(&'static str, u64)>,
    /// Receive time of the last accepted message (epoch ms), 0 if none.
    pub last_accepted_ms: i64,
    /// Newest `ts` among the accepted readings (epoch ms), `i64::MIN` if none.
    pub newest_ts_ms: i64,
}

impl Counts {
    fn new() -> Self {
        Self { newest_ts_ms: i64::MIN, ..Self::default() }
    }

    fn reject(&mut self, reason: &'static str, n: u64) {
        match self.rejected.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += n,
            None => self.rejected.push((reason, n)),
        }
    }
}

/// (device id, epoch bucket: epoch ms / [`BUCKET_MS`]) → counts.
pub type Deltas = HashMap<(u64, i64), Counts>;

thread_local! {
    static DELTAS: RefCell<Deltas> = RefCell::new(HashMap::new());
}

fn with(device_id: u64, at_ms: i64, f: impl FnOnce(&mut Counts)) {
    DELTAS.with(|d| f(d.borrow_mut().entry((device_id, at_ms.div_euclid(BUCKET_MS))).or_insert_with(Counts::new)));
}

/// `messages` accepted (one request, or PUBLISHes stored as one entry) holding `readings`.
pub fn accepted(device_id: u64, messages: u64, readings: &[Reading], at_ms: i64) {
    let newest = readings.iter().map(|r| r.ts_ms).max().unwrap_or(i64::MIN);
    with(device_id, at_ms, |c| {
        c.received += messages;
        c.accepted += messages;
        c.readings += readings.len() as u64;
        c.last_accepted_ms = c.last_accepted_ms.max(at_ms);
        c.newest_ts_ms = c.newest_ts_ms.max(newest);
    });
}

/// `messages` refused for `reason` (see [`reason`]).
pub fn rejected(device_id: u64, messages: u64, reason: &'static str, at_ms: i64) {
    with(device_id, at_ms, |c| {
        c.received += messages;
        c.reject(reason, messages);
    });
}

/// What this thread counted since the last call.
pub fn take() -> Deltas {
    DELTAS.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// The reason a refused request is counted under: the error code, or for bad
/// readings the kind of the first problem (one reason per request, so that
/// received = accepted + the sum of rejected).
pub fn reason(error: &ApiError) -> &'static str {
    let ApiError::Validation { message, details } = error else { return error.code() };
    let Some(first) = details.first() else {
        return if message.starts_with("too many readings") {
            "too_many_readings"
        } else if message.starts_with("body holds no readings") {
            "no_readings"
        } else {
            "not_object_or_array"
        };
    };
    let m: &str = &first.message;
    match m {
        "must be an object" => "not_an_object",
        "unknown field" => "unknown_field",
        "must be an object of metric names to values" => "invalid_values",
        "must hold at least one metric" => "no_metric",
        "must be a finite number or a boolean" => "invalid_value",
        "must be a finite number between -1e300 and 1e300" => "value_out_of_range",
        "must be an RFC 3339 time or integer epoch milliseconds" => "invalid_ts",
        _ if m.starts_with("invalid metric name") => "invalid_metric_name",
        _ if m.ends_with("in the future") => "ts_in_future",
        _ if m.starts_with("is older than") => "ts_too_old",
        _ => "validation_error",
    }
}

/// Where the counters live; not under the stream key, whose pattern the Redis
/// exporter scans for streams.
pub const KEY_PREFIX: &str = "vt:device-stats";

/// The key prefix of one device's counters: `vt:device-stats:<id>`.
pub fn key_prefix(device_id: u64) -> String {
    format!("{KEY_PREFIX}:{device_id}")
}

/// What one hash of `KEY_PREFIX` gets from a flush: increments, and for a
/// device's since-ever hash (`…:total`) its maxima, for a bucket hash
/// (`…:b:<epoch bucket>`) a new expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDelta {
    pub fields: Vec<(String, u64)>,
    /// `Some((last_accepted_ms, newest_ts_ms))` for a since-ever hash, each `None` when there is none.
    pub maxima: Option<(Option<i64>, Option<i64>)>,
}

impl KeyDelta {
    fn merge(&mut self, other: KeyDelta) {
        for (f, n) in other.fields {
            match self.fields.iter_mut().find(|(g, _)| *g == f) {
                Some((_, m)) => *m += n,
                None => self.fields.push((f, n)),
            }
        }
        if let (Some((a, b)), Some((c, d))) = (&mut self.maxima, other.maxima) {
            *a = (*a).max(c);
            *b = (*b).max(d);
        }
    }
}

/// Hash key → what it gets; sorted, so a flush's commands come out the same each time.
pub type KeyDeltas = BTreeMap<String, KeyDelta>;

/// The deltas of each device and bucket as what each of its two hashes gets
/// (the same increments). Hash by hash, so that on a Redis Cluster each
/// `EVAL` can take the hashes of one slot: a device's two are on different ones.
pub fn key_deltas(deltas: Deltas) -> KeyDeltas {
    let mut keys = KeyDeltas::new();
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    deltas.sort_unstable_by_key(|(key, _)| *key);
    for ((device_id, bucket), c) in deltas {
        let mut fields: Vec<(String, u64)> =
            [("received", c.received), ("accepted", c.accepted), ("readings", c.readings)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(f, n)| (f.to_owned(), n))
                .collect();
        fields.extend(c.rejected.iter().map(|(r, n)| (format!("rejected:{r}"), *n)));
        let last = (c.accepted > 0).then_some(c.last_accepted_ms);
        let newest = (c.newest_ts_ms > i64::MIN).then_some(c.newest_ts_ms);
        let prefix = key_prefix(device_id);
        let bucket_delta = KeyDelta { fields: fields.clone(), maxima: None };
        merge_key(&mut keys, format!("{prefix}:total"), KeyDelta { fields, maxima: Some((last, newest)) });
        merge_key(&mut keys, format!("{prefix}:b:{bucket}"), bucket_delta);
    }
    keys
}

fn merge_key(keys: &mut KeyDeltas, key: String, delta: KeyDelta) {
    match keys.entry(key) {
        std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(delta),
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(delta);
        }
    }
}

/// Adds each key's increments; a since-ever hash (kind `t`) then raises
/// `last_accepted_ms` / `newest_ts_ms` to their maximum, a bucket's (kind `b`) expires.
const SCRIPT: &str = r"
local ttl = tonumber(ARGV[1])
local a = 2
for i = 1, #KEYS do
  local key = KEYS[i]
  local n = tonumber(ARGV[a]); a = a + 1
  for _ = 1, n do
    redis.call('HINCRBY', key, ARGV[a], tonumber(ARGV[a + 1])); a = a + 2
  end
  local kind = ARGV[a]; a = a + 1
  if kind == 'b' then
    redis.call('EXPIRE', key, ttl)
  else
    for _, f in ipairs({'last_accepted_ms', 'newest_ts_ms'}) do
      local v = ARGV[a]; a = a + 1
      if v ~= '' then
        local cur = redis.call('HGET', key, f)
        if not cur or tonumber(cur) < tonumber(v) then redis.call('HSET', key, f, v) end
      end
    end
  end
end
return #KEYS
";

/// The `EVAL`s that add `keys`, each with the names of the keys it carries: at
/// most [`KEYS_PER_EVAL`]; on a cluster, only keys of one hash slot together.
pub fn eval_cmds(keys: &KeyDeltas, cluster: bool) -> Vec<(Vec<String>, redis::Cmd)> {
    let names: Vec<&String> = keys.keys().collect();
    let groups: Vec<Vec<&String>> = if cluster {
        let mut by_slot: HashMap<Slot, Vec<&String>> = HashMap::new();
        for name in names {
            by_slot.entry(Slot::for_key(name)).or_default().push(name);
        }
        by_slot.into_values().collect()
    } else {
        vec![names]
    };
    groups
        .iter()
        .flat_map(|group| group.chunks(KEYS_PER_EVAL))
        .map(|chunk| (chunk.iter().map(|k| (*k).clone()).collect(), eval_cmd(keys, chunk)))
        .collect()
}

fn eval_cmd(keys: &KeyDeltas, chunk: &[&String]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SCRIPT).arg(chunk.len());
    for key in chunk {
        cmd.arg(key.as_str());
    }
    cmd.arg(BUCKET_TTL_SECONDS);
    let text = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    for key in chunk {
        let delta = &keys[*key];
        cmd.arg(delta.fields.len());
        for (f, n) in &delta.fields {
            cmd.arg(f).arg(n);
        }
        match delta.maxima {
            None => cmd.arg("b"),
            Some((last, newest)) => cmd.arg("t").arg(text(last)).arg(text(newest)),
        };
    }
    cmd
}

thread_local! {
    /// What Redis refused at the last flush, to go with the next one.
    static UNSENT: RefCell<KeyDeltas> = const { RefCell::new(BTreeMap::new()) };
}

/// Sends this thread's deltas to Redis. What Redis refused is kept for the next
/// flush; an `EVAL` whose answer was lost (a timeout after Redis ran it) may
/// count its second twice, which accounting tolerates better than losing a
/// Redis outage's refusals. On a cluster the `EVAL`s (one per slot) go out
/// together, so one slow or failing node holds up only its own keys.
pub async fn flush(state: &AppState) {
    let mut keys = UNSENT.with(|u| std::mem::take(&mut *u.borrow_mut()));
    for (key, delta) in key_deltas(take()) {
        merge_key(&mut keys, key, delta);
    }
    if keys.is_empty() {
        return;
    }
    let cmds = eval_cmds(&keys, state.config.redis_cluster).into_iter().map(|(names, cmd)| {
        let state = state.clone();
        async move { (names, state.run::<i64>(&cmd).await) }
    });
    let results: Vec<_> = futures_util::stream::iter(cmds).buffer_unordered(CONCURRENT_EVALS).collect().await;
    let mut failure = None;
    for (names, result) in results {
        match result {
            Ok(_) => names.iter().for_each(|k| drop(keys.remove(k))),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        state.redis_failed("device_stats", &e);
    }
    UNSENT.with(|u| {
        let mut unsent = u.borrow_mut();
        for (key, delta) in keys {
            merge_key(&mut unsent, key, delta);
        }
    });
}

/// Flushes this server thread's counters every [`FLUSH_EVERY`], for ever.
pub async fn flush_forever(state: AppState) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush(&state).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{validate, Limits};

    const LIMITS: Limits =
        Limits { max_body_bytes: 64, max_readings: 3, max_future_skew_seconds: 300, retention_days: 30 };
    const NOW: i64 = 1_795_748_400_000;

    fn reason_of(body: &str) -> &'static str {
        reason(&validate(Some("application/json"), body.as_bytes(), NOW, &LIMITS).unwrap_err())
    }

    #[test]
    fn every_refusal_has_its_reason() {
        assert_eq!(reason_of("{"), "malformed_json");
        assert_eq!(reason_of(&format!(r#"{{"t":"{}"}}"#, "x".repeat(64))), "payload_too_large");
        assert_eq!(reason(&ApiError::UnsupportedMediaType), "unsupported_media_type");
        assert_eq!(reason(&ApiError::Unavailable { message: "x", retry_after_seconds: 1 }), "unavailable");
        assert_eq!(reason_of("[]"), "no_readings");
        assert_eq!(reason_of("5"), "not_object_or_array");
        assert_eq!(reason_of(r#"{"a":1,"b":2,"c":3,"d":4}"#), "too_many_readings");
        assert_eq!(reason_of("[1]"), "not_an_object");
        assert_eq!(reason_of(r#"{"values":{"a":1},"x":1}"#), "unknown_field");
        assert_eq!(reason_of(r#"{"values":5}"#), "invalid_values");
        assert_eq!(reason_of(r#"{"ts":1795748400000}"#), "no_metric");
        assert_eq!(reason_of(r#"{"a":"x"}"#), "invalid_value");
        assert_eq!(reason_of(r#"{"a":1e301}"#), "value_out_of_range");
        assert_eq!(reason_of(r#"{"9a":1}"#), "invalid_metric_name");
        assert_eq!(reason_of(r#"{"a":1,"ts":"x"}"#), "invalid_ts");
        assert_eq!(reason_of(r#"{"a":1,"ts":1895748400000}"#), "ts_in_future");
        assert_eq!(reason_of(r#"{"a":1,"ts":1000}"#), "ts_too_old");
    }

    fn reading(ts_ms: i64) -> Reading {
        Reading { metric: "t".into(), ts_ms, value: 1.0 }
    }

    #[test]
    fn counts_add_up_per_device_and_bucket_and_keep_maxima() {
        take();
        accepted(7, 1, &[reading(NOW - 5), reading(NOW - 9)], NOW);
        accepted(7, 2, &[reading(NOW - 50)], NOW + 10);
        rejected(7, 1, "malformed_json", NOW + 20);
        rejected(7, 2, "malformed_json", NOW + 30);
        rejected(8, 1, "unavailable", NOW + BUCKET_MS);
        let d = take();
        assert!(take().is_empty());
        let c = &d[&(7, NOW / BUCKET_MS)];
        assert_eq!((c.received, c.accepted, c.readings), (6, 3, 3));
        assert_eq!(c.rejected, vec![("malformed_json", 3)]);
        assert_eq!((c.last_accepted_ms, c.newest_ts_ms), (NOW + 10, NOW - 5));
        let c8 = &d[&(8, NOW / BUCKET_MS + 1)];
        assert_eq!((c8.received, c8.accepted, c8.newest_ts_ms), (1, 0, i64::MIN));
    }

    #[test]
    fn each_hash_gets_the_device_deltas_the_total_its_maxima_the_bucket_an_expiry() {
        let mut d = Deltas::new();
        let mut c = Counts::new();
        c.received = 3;
        c.accepted = 2;
        c.readings = 5;
        c.rejected = vec![("invalid_ts", 1)];
        c.last_accepted_ms = 10;
        c.newest_ts_ms = 9;
        d.insert((4, 100), c);
        d.insert((4, 101), Counts { received: 1, rejected: vec![("topic", 1)], ..Counts::new() });
        let keys = key_deltas(d);
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(names, ["vt:device-stats:4:b:100", "vt:device-stats:4:b:101", "vt:device-stats:4:total"]);
        assert_eq!(keys["vt:device-stats:4:total"].fields[0], ("received".to_owned(), 4));
        let cmds = eval_cmds(&keys, false);
        assert_eq!(cmds.len(), 1, "one server: one EVAL");
        let args: Vec<String> =
            crate::stream::tests::args(&cmds[0].1).iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        assert_eq!(args[0], "EVAL");
        assert_eq!(
            &args[2..],
            [
                "3",
                "vt:device-stats:4:b:100",
                "vt:device-stats:4:b:101",
                "vt:device-stats:4:total",
                "3900",
                "4",
                "received",
                "3",
                "accepted",
                "2",
                "readings",
                "5",
                "rejected:invalid_ts",
                "1",
                "b",
                "2",
                "received",
                "1",
                "rejected:topic",
                "1",
                "b",
                "5",
                "received",
                "4",
                "accepted",
                "2",
                "readings",
                "5",
                "rejected:invalid_ts",
                "1",
                "rejected:topic",
                "1",
                "t",
                "10",
                "9",
            ]
        );
        let on_cluster = eval_cmds(&keys, true);
        assert_eq!(on_cluster.iter().map(|(k, _)| k.len()).sum::<usize>(), 3);
    }
}
