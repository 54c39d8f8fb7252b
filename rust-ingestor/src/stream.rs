//! The telemetry stream (`docs/contracts.md`, section 1): shard keys, the entry
//! encoding, the XADD, and the periodic backlog sample that drives backpressure.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics;
use crate::state::{AppState, RedisFailure};
use crate::validate::Reading;

/// Version of the entry format of one request, field `v`.
pub const FORMAT_VERSION: &str = "1";
/// Version of the entry format of several requests, field `v`.
pub const GROUP_FORMAT_VERSION: &str = "2";

/// The keys of `n` shards: the base key itself for one shard, else `base:{i}`.
pub fn shard_keys(base: &str, n: u32) -> Vec<String> {
    if n <= 1 {
        vec![base.to_owned()]
    } else {
        (0..n).map(|i| format!("{base}:{{{i}}}")).collect()
    }
}

/// The shard a device writes to: `device_id % n`.
pub fn shard_index(device_id: u64, n: usize) -> usize {
    // n ≤ 1024, so both conversions are lossless.
    usize::try_from(device_id % n as u64).unwrap_or(0)
}

/// One stream key and the last backlog sampled for it.
pub struct Shard {
    pub key: String,
    backlog: AtomicU64,
}

impl Shard {
    pub fn new(key: String) -> Self {
        Self { key, backlog: AtomicU64::new(0) }
    }

    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    pub fn set_backlog(&self, n: u64) {
        self.backlog.store(n, Ordering::Relaxed);
    }
}

/// The shard a device writes to.
pub fn shard_of(state: &AppState, device_id: u64) -> &Shard {
    &state.shards[shard_index(device_id, state.shards.len())]
}

/// Whether the shard's last sampled backlog is over the high-water mark (counted as backpressure).
pub fn over_high_water(state: &AppState, shard: &Shard) -> bool {
    let over = shard.backlog() > state.config.stream_high_water;
    if over {
        metrics::backpressure();
    }
    over
}

/// Appends the compact JSON array of `[metric, ts_ms, value]` triples to `buf`.
/// Metric names are validated to `[A-Za-z0-9_.:-]`, so they need no escaping.
pub fn encode_readings(readings: &[Reading], buf: &mut Vec<u8>) {
    buf.push(b'[');
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"[\"");
        buf.extend_from_slice(r.metric.as_bytes());
        buf.extend_from_slice(b"\",");
        let _ = write!(buf, "{}", r.ts_ms);
        buf.push(b',');
        write_number(r.value, buf);
        buf.push(b']');
    }
    buf.push(b']');
}

/// A finite double as a JSON number: integral values below 2^53 without a
/// fraction (so booleans read `1`/`0`), others in shortest round-trip form.
fn write_number(v: f64, buf: &mut Vec<u8>) {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.fract() == 0.0 && v.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)]
        let _ = write!(buf, "{}", v as i64);
    } else {
        let _ = serde_json::to_writer(&mut *buf, &v);
    }
}

/// The `XADD <key> * v 1 d <id> r <readings> at <ms>` of one accepted request.
pub fn xadd_cmd(key: &str, device_id: u64, readings_json: &[u8], at_ms: i64) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
        .arg("*")
        .arg("v")
        .arg(FORMAT_VERSION)
        .arg("d")
        .arg(device_id)
        .arg("r")
        .arg(readings_json)
        .arg("at")
        .arg(at_ms);
    cmd
}

/// One request's part of an entry of format 2: its device, receive time and encoded readings.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub device_id: u64,
    pub at_ms: i64,
    pub readings_json: &'a [u8],
}

/// The `XADD <key> * v 2 g <parts>` of several accepted requests: `g` is the
/// compact JSON array of `[device_id, at_ms, readings]`, one per request, in order.
pub fn xadd_group_cmd(key: &str, parts: &[Part<'_>]) -> redis::Cmd {
    let size: usize = parts.iter().map(|p| p.readings_json.len() + 32).sum();
    let mut group = Vec::with_capacity(size + 2);
    group.push(b'[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            group.push(b',');
        }
        let _ = write!(group, "[{},{},", part.device_id, part.at_ms);
        group.extend_from_slice(part.readings_json);
        group.push(b']');
    }
    group.push(b']');
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*").arg("v").arg(GROUP_FORMAT_VERSION).arg("g").arg(group);
    cmd
}

/// The backlog of `group` from an `XINFO GROUPS` reply: `lag + pending`, or
/// `None` when the group is absent or Redis reports no lag (then XLEN counts).
pub fn backlog_from_groups(reply: &redis::Value, group: &str) -> Option<u64> {
    let redis::Value::Array(groups) = reply else { return None };
    for g in groups {
        let pairs: Vec<(&redis::Value, &redis::Value)> = match g {
            redis::Value::Array(flat) => flat.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
            redis::Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            _ => continue,
        };
        let field = |name: &str| pairs.iter().find(|(k, _)| text(k).as_deref() == Some(name)).map(|(_, v)| *v);
        if field("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        let pending = field("pending").and_then(int)?;
        let lag = field("lag").and_then(int)?;
        return Some(pending + lag);
    }
    None
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &redis::Value) -> Option<u64> {
    match v {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// Samples one shard's backlog; a stream that does not exist yet has none.
pub async fn sample_shard(state: &AppState, key: &str) -> Result<u64, RedisFailure> {
    match state.run::<redis::Value>(&xinfo_groups_cmd(key)).await {
        Ok(reply) => {
            if let Some(n) = backlog_from_groups(&reply, &state.config.stream_group) {
                return Ok(n);
            }
        }
        Err(RedisFailure::Redis(e)) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => return Err(e),
    }
    state.run(&xlen_cmd(key)).await
}

pub fn xinfo_groups_cmd(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("GROUPS").arg(key);
    cmd
}

pub fn xlen_cmd(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XLEN");
    cmd.arg(key);
    cmd
}

/// Keeps every shard's backlog fresh, every `VT_BACKLOG_CHECK_MS`, so requests
/// never query it. On a Redis error the last sample stands (XADD fails anyway).
pub async fn sample_backlog_forever(state: AppState) {
    let mut tick = tokio::time::interval(state.config.backlog_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sample_all(&state).await;
    }
}

pub async fn sample_all(state: &AppState) {
    state.limiter.report();
    for (i, shard) in state.shards.iter().enumerate() {
        match sample_shard(state, &shard.key).await {
            Ok(n) => {
                shard.set_backlog(n);
                metrics::stream_backlog(i, n);
            }
            Err(e) => state.redis_failed("backlog", &e),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use redis::Value as V;

    fn r(metric: &str, ts_ms: i64, value: f64) -> Reading {
        Reading { metric: metric.into(), ts_ms, value }
    }

    #[test]
    fn entries_encode_compact_triples() {
        let mut buf = Vec::new();
        encode_readings(
            &[r("temperature", 1_764_212_400_123, 21.5), r("door.open", -5, 1.0), r("x", 0, -0.25)],
            &mut buf,
        );
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"[["temperature",1764212400123,21.5],["door.open",-5,1],["x",0,-0.25]]"#
        );
        let parsed: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(parsed[0][2], 21.5);
    }

    #[test]
    fn large_and_tiny_numbers_round_trip() {
        for v in [1e20, 9_007_199_254_740_993.0, 1e-7, f64::MAX, -f64::MIN_POSITIVE, 123_456.789] {
            let mut buf = Vec::new();
            encode_readings(&[r("m", 1, v)], &mut buf);
            let parsed: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(parsed[0][2].as_f64(), Some(v), "{}", String::from_utf8_lossy(&buf));
        }
    }

    #[test]
    fn the_xadd_has_the_contract_fields() {
        let args = args(&xadd_cmd("vt:telemetry", 42, b"[]", 7));
        let expected: Vec<&[u8]> =
            vec![b"XADD", b"vt:telemetry", b"*", b"v", b"1", b"d", b"42", b"r", b"[]", b"at", b"7"];
        assert_eq!(args, expected);
    }

    /// The arguments of a command, as sent (for tests here and in `append`).
    pub(crate) fn args(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_group_entry_carries_each_request_in_order() {
        let parts = [
            Part { device_id: 42, at_ms: 7, readings_json: br#"[["t",5,1.5]]"# },
            Part { device_id: 3, at_ms: 8, readings_json: br#"[["h",6,2],["h",7,3]]"# },
        ];
        let args = args(&xadd_group_cmd("k", &parts));
        let expected: Vec<&[u8]> =
            vec![b"XADD", b"k", b"*", b"v", b"2", b"g", br#"[[42,7,[["t",5,1.5]]],[3,8,[["h",6,2],["h",7,3]]]]"#];
        assert_eq!(args, expected);
        let parsed: serde_json::Value = serde_json::from_slice(&args[6]).unwrap();
        assert_eq!(parsed[1][2][1][2], 3);
    }

    #[test]
    fn shards_are_hash_tagged_and_chosen_by_modulo() {
        assert_eq!(shard_keys("vt:telemetry", 1), ["vt:telemetry"]);
        assert_eq!(shard_keys("s", 3), ["s:{0}", "s:{1}", "s:{2}"]);
        assert_eq!(shard_index(7, 3), 1);
        assert_eq!(shard_index(u64::MAX, 1), 0);
    }

    fn bulk(s: &str) -> V {
        V::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn backlog_is_lag_plus_pending_of_our_group() {
        let group = |name: &str, pending: i64, lag: V| {
            V::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                V::Int(1),
                bulk("pending"),
                V::Int(pending),
                bulk("last-delivered-id"),
                bulk("0-0"),
                bulk("entries-read"),
                V::Nil,
                bulk("lag"),
                lag,
            ])
        };
        let reply = V::Array(vec![group("other", 100, V::Int(100)), group("aggregators", 3, V::Int(4))]);
        assert_eq!(backlog_from_groups(&reply, "aggregators"), Some(7));
        assert_eq!(backlog_from_groups(&reply, "missing"), None);
        let no_lag = V::Array(vec![group("aggregators", 3, V::Nil)]);
        assert_eq!(backlog_from_groups(&no_lag, "aggregators"), None);
        let resp3 = V::Array(vec![V::Map(vec![
            (bulk("name"), bulk("g")),
            (bulk("pending"), V::Int(1)),
            (bulk("lag"), V::Int(2)),
        ])]);
        assert_eq!(backlog_from_groups(&resp3, "g"), Some(3));
    }
}
