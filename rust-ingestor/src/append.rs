//! Group append: what a server thread accepts for a shard while its previous
//! XADD there is in flight goes out together in the next one, as one entry of
//! format 2 (`docs/contracts.md`, section 1); a lone request is written as an
//! entry of format 1. Every request is still answered only after the XADD that
//! carries its readings returned an id. Why: docs/design.md, "Group append".

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::in_doubt::{self, Settled};
use crate::metrics;
use crate::state::{redis_failed, AppendFailure, Link, RedisFailure};
use crate::stream::{self, Part, Shard};

/// The most bytes of readings one entry gathers (a single larger request still
/// goes out, alone): entries stay small enough for Redis and the aggregator to
/// move in chunks.
const MOST_ENTRY_BYTES: usize = 1 << 20;

/// One accepted request (or MQTT batch) waiting for the XADD that carries it.
struct Waiting {
    device_id: u64,
    at_ms: i64,
    readings_json: Vec<u8>,
    stored: oneshot::Sender<Result<(), NotStored>>,
}

/// Why a request's readings were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Not written: Redis failed or did not answer in time (counted and logged).
    Failed,
    /// Perhaps written: fewer replicas than `VT_STREAM_WAIT_REPLICAS` confirmed it in time, or its answer was
    /// lost and Redis could not say. It may be stored (a resend is a duplicate, dropped), or lost.
    MayBeStored,
}

/// One lane per shard, each a task on the server thread that first used it.
pub struct Appender {
    shards: Arc<[Shard]>,
    lanes: Box<[OnceLock<mpsc::Sender<Waiting>>]>,
    most_requests: usize,
    redis: Link,
    /// How long a write whose answer was lost may wait for Redis to tell whether it is in.
    settle_budget: Duration,
}

impl Appender {
    pub fn new(shards: Arc<[Shard]>, most_requests: usize, redis: Link, settle_budget: Duration) -> Self {
        Self {
            lanes: shards.iter().map(|_| OnceLock::new()).collect(),
            shards,
            most_requests: most_requests.max(1),
            redis,
            settle_budget,
        }
    }

    /// Writes one request's encoded readings to shard `shard`; returns once
    /// Redis has them (or has failed).
    pub async fn append(
        &self,
        shard: usize,
        device_id: u64,
        at_ms: i64,
        readings_json: Vec<u8>,
    ) -> Result<(), NotStored> {
        if self.most_requests == 1 {
            // One entry per request: each request makes its own XADD, many in flight on the connection.
            let key = &self.shards[shard].key;
            let cmd = stream::xadd_cmd(key, device_id, &readings_json, at_ms);
            return match self.redis.append(key, &cmd).await {
                Ok(_) => Ok(()),
                Err(AppendFailure::ShortOfReplicas { .. }) => {
                    metrics::stream_wait_short();
                    Err(NotStored::MayBeStored)
                }
                Err(AppendFailure::Failed(e)) => {
                    let after = in_doubt::lower_bound(None, at_ms);
                    after_failure(&self.redis, key, &cmd, &after, self.settle_budget, &e).await
                }
            };
        }
        let (stored, answer) = oneshot::channel();
        let waiting = Waiting { device_id, at_ms, readings_json, stored };
        self.lane(shard).send(waiting).await.map_err(|_| NotStored::Failed)?;
        answer.await.unwrap_or(Err(NotStored::Failed))
    }

    /// The shard's lane, started on first use (inside the server thread's runtime).
    fn lane(&self, shard: usize) -> &mpsc::Sender<Waiting> {
        self.lanes[shard].get_or_init(|| {
            let (send, queue) = mpsc::channel(4 * self.most_requests);
            let lane = Lane {
                key: self.shards[shard].key.clone(),
                redis: self.redis.clone(),
                settle_budget: self.settle_budget,
            };
            tokio::spawn(lane.run(self.most_requests, queue));
            send
        })
    }
}

/// The writer of one shard on one server thread.
struct Lane {
    key: String,
    redis: Link,
    settle_budget: Duration,
}

impl Lane {
    /// Takes what is waiting (at least one, at most `most` requests), writes it in
    /// one XADD, answers each, and again. While an XADD is out, the next requests
    /// queue up: under load entries grow by themselves, and a quiet lane pays
    /// nothing (no timer, no waiting for company).
    async fn run(self, most: usize, mut queue: mpsc::Receiver<Waiting>) {
        let mut group: Vec<Waiting> = Vec::new();
        let mut held: Option<Waiting> = None;
        // The id of this lane's last entry: every later one comes after it.
        let mut last_id: Option<String> = None;
        loop {
            let first = match held.take() {
                Some(w) => w,
                None => match queue.recv().await {
                    Some(w) => w,
                    None => return,
                },
            };
            let mut bytes = first.readings_json.len();
            group.push(first);
            while group.len() < most {
                match queue.try_recv() {
                    Ok(w) if bytes + w.readings_json.len() > MOST_ENTRY_BYTES => {
                        held = Some(w);
                        break;
                    }
                    Ok(w) => {
                        bytes += w.readings_json.len();
                        group.push(w);
                    }
                    Err(_) => break,
                }
            }
            metrics::entry_requests(group.len());
            let cmd = entry_cmd(&self.key, &group);
            match self.redis.append(&self.key, &cmd).await {
                Ok(id) => {
                    last_id = Some(id);
                    answer(group.drain(..), Ok(()));
                }
                Err(AppendFailure::ShortOfReplicas { id }) => {
                    // In the stream but not on enough replicas: refused, so a resend is a duplicate
                    // the aggregator drops (rows are unique on device, metric and ts).
                    metrics::stream_wait_short();
                    last_id = Some(id);
                    answer(group.drain(..), Err(NotStored::MayBeStored));
                }
                Err(AppendFailure::Failed(e)) => {
                    // Settled apart, so the lane goes on writing what comes next meanwhile.
                    let after = in_doubt::lower_bound(last_id.as_deref(), group[0].at_ms);
                    let (group, redis, key, budget) =
                        (std::mem::take(&mut group), self.redis.clone(), self.key.clone(), self.settle_budget);
                    tokio::spawn(async move {
                        let stored = after_failure(&redis, &key, &cmd, &after, budget, &e).await;
                        answer(group.into_iter(), stored);
                    });
                }
            }
        }
    }
}

/// Whether a failed XADD's entry is in the stream all the same: counted and
/// logged, then, when the command may have run, Redis is asked (`in_doubt`).
async fn after_failure(
    redis: &Link,
    key: &str,
    cmd: &redis::Cmd,
    after: &str,
    budget: Duration,
    failure: &RedisFailure,
) -> Result<(), NotStored> {
    redis_failed("xadd", failure);
    if !in_doubt::may_have_run(failure) {
        return Err(NotStored::Failed);
    }
    match in_doubt::settle(redis, key, cmd, after, budget).await {
        // Found, but no replica was asked: with VT_STREAM_WAIT_REPLICAS, not the promise a 202 makes.
        Settled::Stored if redis.waits_for_replicas() => Err(NotStored::MayBeStored),
        Settled::Stored => Ok(()),
        Settled::NotStored => Err(NotStored::Failed),
        Settled::Unknown => Err(NotStored::MayBeStored),
    }
}

fn answer(group: impl Iterator<Item = Waiting>, stored: Result<(), NotStored>) {
    for waiting in group {
        // The request may be gone (its client left); its readings are in the stream all the same.
        let _ = waiting.stored.send(stored);
    }
}

/// The XADD of a group: format 1 for a lone request, format 2 for several.
fn entry_cmd(key: &str, group: &[Waiting]) -> redis::Cmd {
    if let [one] = group {
        return stream::xadd_cmd(key, one.device_id, &one.readings_json, one.at_ms);
    }
    let parts: Vec<Part<'_>> = group
        .iter()
        .map(|w| Part { device_id: w.device_id, at_ms: w.at_ms, readings_json: &w.readings_json })
        .collect();
    stream::xadd_group_cmd(key, &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(device_id: u64, readings: &str) -> Waiting {
        let (stored, _) = oneshot::channel();
        Waiting { device_id, at_ms: 9, readings_json: readings.as_bytes().to_vec(), stored }
    }

    fn fields(cmd: &redis::Cmd) -> Vec<String> {
        stream::tests::args(cmd).iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }

    #[test]
    fn a_lone_request_is_an_entry_of_format_1() {
        let cmd = entry_cmd("k", &[waiting(4, "[]")]);
        assert_eq!(fields(&cmd), ["XADD", "k", "*", "v", "1", "d", "4", "r", "[]", "at", "9"]);
    }

    #[test]
    fn several_requests_are_one_entry_of_format_2() {
        let cmd = entry_cmd("k", &[waiting(4, r#"[["a",1,1]]"#), waiting(5, r#"[["b",2,2]]"#)]);
        assert_eq!(fields(&cmd), ["XADD", "k", "*", "v", "2", "g", r#"[[4,9,[["a",1,1]]],[5,9,[["b",2,2]]]]"#]);
    }
}
