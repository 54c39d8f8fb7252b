//! Device authentication from the Redis token index (`docs/contracts.md`, section 2):
//! field = lowercase hex SHA-256 of the bearer token, value `<device_id>:active|disabled`.
//! Lookups, known or unknown, are cached for at most the configured TTL (≤ 5 s),
//! so a revoked token dies and a new one starts working within that time.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::metrics;
use crate::state::{AppState, RedisFailure};

/// A device as the index describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub id: u64,
    pub active: bool,
}

/// Above this many cached tokens the cache is pruned, so unknown tokens sprayed
/// at the service cannot grow memory without bound.
const MAX_CACHED: usize = 65_536;

/// The token of `Authorization: Bearer <token>`, or `None` if absent or garbled.
pub fn bearer_token(header: Option<&HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && plausible_token(token)).then_some(token)
}

/// SHA-256 of the token's bytes.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The index field of a digest: lowercase hex.
pub fn index_field(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses an index value `<device_id>:active` or `<device_id>:disabled`.
pub fn parse_index_value(value: &str) -> Option<Device> {
    let (id, status) = value.split_once(':')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let active = match status {
        "active" => true,
        "disabled" => false,
        _ => return None,
    };
    Some(Device { id: id.parse().ok()?, active })
}

/// Token digest -> (lookup result, when it was read).
type Entries = HashMap<[u8; 32], (Option<Device>, Instant)>;

/// A small TTL cache of index lookups; `None` caches "unknown token".
pub struct TokenCache {
    ttl: Duration,
    entries: RwLock<Entries>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: RwLock::new(HashMap::new()) }
    }

    /// `Some(lookup)` if a fresh entry exists.
    pub fn get(&self, digest: &[u8; 32], now: Instant) -> Option<Option<Device>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (device, stored) = entries.get(digest)?;
        (now.saturating_duration_since(*stored) < self.ttl).then_some(*device)
    }

    pub fn insert(&self, digest: [u8; 32], device: Option<Device>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            let ttl = self.ttl;
            entries.retain(|_, (_, stored)| now.saturating_duration_since(*stored) < ttl);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(digest, (device, now));
    }
}

/// The active device behind the request's bearer token: 401 if there is none
/// or it is unknown, 403 if disabled, 503 if the index cannot be read.
pub async fn authenticate(state: &AppState, authorization: Option<&HeaderValue>) -> Result<Device, ApiError> {
    let token = bearer_token(authorization).ok_or(ApiError::Unauthorized)?;
    authenticate_token(state, token).await
}

/// As [`authenticate`], for a token given another way (a URL path, an MQTT user name).
pub async fn authenticate_token(state: &AppState, token: &str) -> Result<Device, ApiError> {
    if !plausible_token(token) {
        return Err(ApiError::Unauthorized);
    }
    match lookup(state, &token_digest(token)).await? {
        None => Err(ApiError::Unauthorized),
        Some(Device { active: false, .. }) => Err(ApiError::Forbidden),
        Some(d) => Ok(d),
    }
}

/// A token that could be in the index: printable ASCII, no spaces, not empty.
pub fn plausible_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 512 && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The index entry of a token digest, from the cache or else Redis (then cached).
pub async fn lookup(state: &AppState, digest: &[u8; 32]) -> Result<Option<Device>, ApiError> {
    let now = Instant::now();
    if let Some(cached) = state.tokens.get(digest, now) {
        metrics::token_cache(true);
        return Ok(cached);
    }
    metrics::token_cache(false);
    let cmd = hget_cmd(&state.config.token_index_key, digest);
    let value: Option<String> = state.redis("token_lookup", &cmd).await?;
    let device = value.as_deref().and_then(parse_logged);
    state.tokens.insert(*digest, device, now);
    Ok(device)
}

/// The index entries of many digests in one `HMGET`, straight from Redis (the
/// cache is refreshed with them): how open MQTT connections learn of revocations.
pub async fn lookup_many(state: &AppState, digests: &[[u8; 32]]) -> Result<Vec<Option<Device>>, RedisFailure> {
    let values: Vec<Option<String>> = state.run(&hmget_cmd(&state.config.token_index_key, digests)).await?;
    let now = Instant::now();
    Ok(digests
        .iter()
        .zip(values)
        .map(|(digest, value)| {
            let device = value.as_deref().and_then(parse_logged);
            state.tokens.insert(*digest, device, now);
            device
        })
        .collect())
}

pub fn hget_cmd(index_key: &str, digest: &[u8; 32]) -> redis::Cmd {
    let mut cmd = redis::cmd("HGET");
    cmd.arg(index_key).arg(index_field(digest));
    cmd
}

pub fn hmget_cmd(index_key: &str, digests: &[[u8; 32]]) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(index_key);
    for digest in digests {
        cmd.arg(index_field(digest));
    }
    cmd
}

fn parse_logged(value: &str) -> Option<Device> {
    let parsed = parse_index_value(value);
    if parsed.is_none() {
        tracing::warn!(value, "malformed token index value; treating the token as unknown");
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer_token(Some(&h("Bearer vtd_abc"))), Some("vtd_abc"));
        assert_eq!(bearer_token(Some(&h("bearer vtd_abc"))), Some("vtd_abc"));
        assert_eq!(bearer_token(None), None);
        assert_eq!(bearer_token(Some(&h("Bearer"))), None);
        assert_eq!(bearer_token(Some(&h("Bearer "))), None);
        assert_eq!(bearer_token(Some(&h("Basic dXNlcjpwdw=="))), None);
        assert_eq!(bearer_token(Some(&h("Bearer a b"))), None);
        assert_eq!(bearer_token(Some(&HeaderValue::from_bytes(b"Bearer \xff").unwrap())), None);
    }

    #[test]
    fn the_index_field_is_lowercase_hex_sha256() {
        // sha256("abc"), a published test vector.
        assert_eq!(
            index_field(&token_digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn index_values() {
        assert_eq!(parse_index_value("42:active"), Some(Device { id: 42, active: true }));
        assert_eq!(parse_index_value("7:disabled"), Some(Device { id: 7, active: false }));
        for bad in ["42", "42:", ":active", "x:active", "-1:active", "42:ACTIVE", "42:active:x", "+4:active"] {
            assert_eq!(parse_index_value(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_entries_expire_after_the_ttl() {
        let cache = TokenCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let d = Some(Device { id: 1, active: true });
        assert_eq!(cache.get(&[1; 32], t0), None);
        cache.insert([1; 32], d, t0);
        cache.insert([2; 32], None, t0);
        assert_eq!(cache.get(&[1; 32], t0 + Duration::from_millis(1999)), Some(d));
        assert_eq!(cache.get(&[2; 32], t0), Some(None));
        assert_eq!(cache.get(&[1; 32], t0 + Duration::from_secs(2)), None);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = TokenCache::new(Duration::ZERO);
        let t0 = Instant::now();
        cache.insert([1; 32], None, t0);
        assert_eq!(cache.get(&[1; 32], t0), None);
    }
}
