//! A write whose answer was lost. When the connection drops (Redis killed, or
//! shutting down after it ran the XADD but before the reply went out) or the
//! reply is late, the entry may be in the stream or not; answering 503 then could
//! tell a device "not stored" about readings that are. So the ingestor asks Redis,
//! once it answers again, whether an entry with exactly these fields was appended
//! after a point known to precede the write, and answers by what it finds.
//! Why and what is left: docs/design.md, "A write in doubt".

use std::time::Duration;

use tokio::time::Instant;

use crate::metrics;
use crate::state::{Link, RedisFailure};

/// Looks for an entry with exactly the given fields after ARGV[1] (an XRANGE
/// start); its id, false when none is there, 0 when the scan stopped at its
/// limit first (then nobody can tell).
const FIND_ENTRY: &str = r"
local want = #ARGV - 1
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', 10000)
for _, entry in ipairs(entries) do
  local fields = entry[2]
  if #fields == want then
    local same = true
    for i = 1, want do
      if fields[i] ~= ARGV[i + 1] then same = false break end
    end
    if same then return entry[1] end
  end
end
if #entries == 10000 then return 0 end
return false
";

/// Entry ids carry Redis's clock; a bound taken from ours allows this much skew.
const CLOCK_SLACK_MS: i64 = 2_000;
/// Between two questions while Redis does not answer.
const PAUSE: Duration = Duration::from_millis(100);

/// Whether a failed XADD may have been applied: yes unless Redis answered with
/// an error or the connection was refused (then the command never ran).
pub fn may_have_run(failure: &RedisFailure) -> bool {
    match failure {
        RedisFailure::Timeout(_) => true,
        RedisFailure::Redis(e) => e.code().is_none() && !e.is_connection_refusal(),
    }
}

/// An XRANGE start that precedes the entry of a write sent after `before_ms`
/// (our clock): just after the last id this writer got back, or, without one,
/// a little before `before_ms`. Made only once a write has failed.
pub fn lower_bound(last_id: Option<&str>, before_ms: i64) -> String {
    match last_id {
        Some(id) => format!("({id}"),
        None => format!("{}-0", (before_ms - CLOCK_SLACK_MS).max(0)),
    }
}

/// What asking Redis found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Stored,
    NotStored,
    /// Redis did not answer within the budget, or too many entries came after the bound.
    Unknown,
}

/// The `EVAL` looking in `key` for the entry of `xadd` after `after` (one key: one slot).
pub fn find_cmd(key: &str, xadd: &redis::Cmd, after: &str) -> redis::Cmd {
    let mut find = redis::cmd("EVAL");
    find.arg(FIND_ENTRY).arg(1).arg(key).arg(after);
    // XADD <key> <id> then the fields and their values, as the entry holds them.
    for arg in xadd.args_iter().skip(3) {
        if let redis::Arg::Simple(bytes) = arg {
            find.arg(bytes);
        }
    }
    find
}

/// Asks Redis, until it answers or `budget` has passed, whether the XADD `xadd`
/// (of `key`) appended its entry after `after` (from [`lower_bound`]).
pub async fn settle(link: &Link, key: &str, xadd: &redis::Cmd, after: &str, budget: Duration) -> Settled {
    let find = find_cmd(key, xadd, after);
    let deadline = Instant::now() + budget;
    let settled = loop {
        match link.run::<redis::Value>(&find).await {
            Ok(redis::Value::Nil) => break Settled::NotStored,
            Ok(redis::Value::Int(_)) => break Settled::Unknown,
            Ok(_) => break Settled::Stored,
            Err(_) if Instant::now() + PAUSE < deadline => tokio::time::sleep(PAUSE).await,
            Err(_) => break Settled::Unknown,
        }
    };
    metrics::write_in_doubt(settled);
    tracing::warn!(key, outcome = ?settled, "the answer to an XADD was lost; asked Redis what became of it");
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_after_a_known_id_excludes_it() {
        assert_eq!(lower_bound(Some("1795748400000-3"), 1_795_748_400_500), "(1795748400000-3");
    }

    #[test]
    fn without_an_id_the_bound_is_a_little_before_the_write() {
        assert_eq!(lower_bound(None, 1_795_748_400_500), format!("{}-0", 1_795_748_400_500 - CLOCK_SLACK_MS));
        assert_eq!(lower_bound(None, 5), "0-0", "never before the first possible id");
    }

    #[test]
    fn a_timeout_or_a_dropped_connection_leaves_the_write_in_doubt_an_error_reply_does_not() {
        assert!(may_have_run(&RedisFailure::Timeout(Duration::from_secs(1))));
        let dropped = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(may_have_run(&RedisFailure::Redis(dropped)));
        let refused = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!may_have_run(&RedisFailure::Redis(refused)));
        let oom = redis::parse_redis_value(b"-OOM command not allowed\r\n").unwrap().extract_error().unwrap_err();
        assert!(!may_have_run(&RedisFailure::Redis(oom)));
    }
}
