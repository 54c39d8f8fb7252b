//! From PUBLISH to stream entry: the topic and payload checks (the payload by
//! the same `validate` as `/api/ingest`), and batching. The valid PUBLISHes
//! that come while a connection's previous batch is being stored become one
//! batch, one request's worth of readings (the device is the same), handed to
//! the appender like an HTTP request; the appender may put batches of several
//! connections in one entry (`append.rs`). Their PUBACKs follow the reply of
//! the XADD that carries them.

use std::num::NonZeroU16;
use std::time::Instant;

use futures_util::future::BoxFuture;

use crate::ratelimit::Budget;
use crate::state::AppState;
use crate::validate::{self, Limits, Reading};
use crate::{device_stats, stream};

/// Topics that carry telemetry: ThingsBoard's device topic, and ours.
pub const TOPICS: [&str; 2] = ["v1/devices/me/telemetry", "vt/telemetry"];

/// Why a PUBLISH is not stored (the `result` label of the messages metric, too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON, or not readings by the rules of `/api/ingest`.
    Invalid,
    /// A payload over `VT_MAX_BODY_BYTES`.
    TooLarge,
    /// A topic that carries no telemetry.
    Topic,
    /// The device's stream shard is over its high-water mark.
    Backpressure,
    /// The device is over its live rate limit.
    RateLimited,
    /// The device is over its backfill rate limit.
    BackfillRateLimited,
}

impl Refusal {
    /// Index into `metrics::MQTT_MESSAGE_RESULTS`.
    pub fn result(self) -> usize {
        match self {
            Self::Invalid => 1,
            Self::TooLarge => 2,
            Self::Topic => 3,
            Self::Backpressure => 4,
            Self::RateLimited => 7,
            Self::BackfillRateLimited => 8,
        }
    }
}

impl From<crate::ratelimit::Budget> for Refusal {
    fn from(budget: crate::ratelimit::Budget) -> Self {
        match budget {
            crate::ratelimit::Budget::Live => Self::RateLimited,
            crate::ratelimit::Budget::Backfill => Self::BackfillRateLimited,
        }
    }
}

impl Refusal {
    /// Refusals that say "not now" rather than "never": nothing is acknowledged
    /// on 3.1.1, which has no negative PUBACK (the connection is closed instead).
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Backpressure | Self::RateLimited | Self::BackfillRateLimited)
    }
}

/// The readings of a PUBLISH, or why it is refused.
pub fn check(topic: &str, payload: &[u8], now_ms: i64, limits: &Limits) -> Result<Vec<Reading>, Refusal> {
    if !TOPICS.contains(&topic) {
        return Err(Refusal::Topic);
    }
    if payload.len() > limits.max_body_bytes {
        return Err(Refusal::TooLarge);
    }
    validate::validate(Some("application/json"), payload, now_ms, limits).map_err(|_| Refusal::Invalid)
}

/// Counts a refused PUBLISH against its device (`device_stats`). The reason of
/// invalid readings is found by validating again: refusals are rare, and the
/// accepted path keeps no error it does not need.
pub fn count_refusal<T>(device_id: u64, checked: &Result<T, Refusal>, payload: &[u8], now_ms: i64, limits: &Limits) {
    let Err(why) = checked else { return };
    let reason = match why {
        Refusal::Topic => "topic",
        Refusal::TooLarge => "payload_too_large",
        Refusal::Backpressure => "unavailable",
        Refusal::RateLimited => "rate_limited",
        Refusal::BackfillRateLimited => "backfill_rate_limited",
        Refusal::Invalid => match validate::validate(Some("application/json"), payload, now_ms, limits) {
            Err(e) => device_stats::reason(&e),
            Ok(_) => "validation_error",
        },
    };
    device_stats::rejected(device_id, 1, reason, now_ms);
}

/// One PUBLISH waiting for its answer.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// QoS 1 only; QoS 0 has nothing to answer.
    pub packet_id: Option<NonZeroU16>,
    pub received: Instant,
}

/// What became of a group of PUBLISHes, in the order they came.
pub enum Outcome {
    /// In the stream: PUBACK each.
    Stored { readings: usize },
    /// Not stored, and never will be as sent.
    Refused(Refusal),
    /// Not known to be stored (the XADD failed, or its answer was lost and Redis
    /// could not tell in time): nothing may be acknowledged.
    Unavailable,
}

pub struct Done {
    pub pending: Vec<Pending>,
    pub outcome: Outcome,
    /// Readings taken from each rate-limit budget, to give back if they were not stored.
    pub taken: [(Budget, usize); 2],
}

const NOTHING_TAKEN: [(Budget, usize); 2] = [(Budget::Live, 0), (Budget::Backfill, 0)];

/// The valid PUBLISHes of one read of one connection, becoming one entry.
#[derive(Default)]
pub struct Batch {
    readings: Vec<Reading>,
    pending: Vec<Pending>,
    /// Readings taken from the live and the backfill budget.
    taken: [usize; 2],
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn readings(&self) -> usize {
        self.readings.len()
    }

    pub fn push(&mut self, readings: Vec<Reading>, budget: Budget, pending: Pending) {
        self.taken[usize::from(budget == Budget::Backfill)] += readings.len();
        if self.readings.is_empty() {
            self.readings = readings;
        } else {
            self.readings.extend(readings);
        }
        self.pending.push(pending);
    }

    /// The XADD of the batch, answered as one; the batch is left empty.
    pub fn store(&mut self, state: &AppState, device_id: u64, at_ms: i64) -> BoxFuture<'static, Done> {
        let readings = std::mem::take(&mut self.readings);
        let pending = std::mem::take(&mut self.pending);
        let [live, backfill] = std::mem::take(&mut self.taken);
        let taken = [(Budget::Live, live), (Budget::Backfill, backfill)];
        let mut encoded = Vec::with_capacity(readings.len() * 40 + 2);
        stream::encode_readings(&readings, &mut encoded);
        let shard = stream::shard_index(device_id, state.shards.len());
        let state = state.clone();
        let count = readings.len();
        Box::pin(async move {
            let messages = pending.len() as u64;
            let outcome = if state.appender.append(shard, device_id, at_ms, encoded).await.is_ok() {
                device_stats::accepted(device_id, messages, &readings, at_ms);
                Outcome::Stored { readings: count }
            } else {
                device_stats::rejected(device_id, messages, "unavailable", at_ms);
                Outcome::Unavailable
            };
            Done { pending, outcome, taken }
        })
    }
}

/// An answer known without Redis, queued behind the ones before it.
pub fn refused(pending: Pending, why: Refusal) -> BoxFuture<'static, Done> {
    Box::pin(std::future::ready(Done { pending: vec![pending], outcome: Outcome::Refused(why), taken: NOTHING_TAKEN }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { max_body_bytes: 64, max_readings: 5, max_future_skew_seconds: 300, retention_days: 30 };
    const NOW: i64 = 1_795_748_400_000;

    #[test]
    fn both_topics_take_the_three_payload_shapes() {
        for topic in TOPICS {
            assert_eq!(check(topic, br#"{"t":1}"#, NOW, &LIMITS).unwrap().len(), 1);
            assert_eq!(check(topic, br#"[{"t":1},{"h":2}]"#, NOW, &LIMITS).unwrap().len(), 2);
            assert_eq!(check(topic, br#"{"ts":1795748400000,"values":{"t":1}}"#, NOW, &LIMITS).unwrap().len(), 1);
        }
    }

    #[test]
    fn refusals_name_their_reason() {
        let t = TOPICS[0];
        assert_eq!(check("v1/devices/me/attributes", br#"{"t":1}"#, NOW, &LIMITS), Err(Refusal::Topic));
        assert_eq!(check(t, b"{", NOW, &LIMITS), Err(Refusal::Invalid));
        assert_eq!(check(t, br#"{"9t":1}"#, NOW, &LIMITS), Err(Refusal::Invalid));
        assert_eq!(check(t, b"", NOW, &LIMITS), Err(Refusal::Invalid));
        let big = format!(r#"{{"t":{}}}"#, "1".repeat(64));
        assert_eq!(check(t, big.as_bytes(), NOW, &LIMITS), Err(Refusal::TooLarge));
    }

    #[test]
    fn a_batch_gathers_readings_and_answers() {
        let mut batch = Batch::default();
        assert!(batch.is_empty());
        let p = Pending { packet_id: NonZeroU16::new(1), received: Instant::now() };
        batch.push(check(TOPICS[0], br#"{"a":1,"b":2}"#, NOW, &LIMITS).unwrap(), Budget::Live, p);
        let q0 = Pending { packet_id: None, ..p };
        batch.push(check(TOPICS[1], br#"{"c":3}"#, NOW, &LIMITS).unwrap(), Budget::Backfill, q0);
        assert_eq!(batch.readings(), 3);
        assert_eq!(batch.taken, [2, 1]);
        assert!(!batch.is_empty());
    }
}
