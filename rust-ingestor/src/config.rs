//! Settings from the environment. Every variable has a default, which an unset or
//! empty variable takes (as in the Python parts); a value that is set but malformed
//! stops the process at start with an error naming it. `Config::settings` lists
//! what each variable accepts (`--print-settings`), read off the same calls.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::validate::Limits;

/// A setting that could not be used, named by its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason} (got {value:?})")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// A variable, what it takes when unset (here, on this machine) and what it accepts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingSpec {
    pub name: &'static str,
    pub default: Value,
    #[serde(flatten)]
    pub accepts: Accepts,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Accepts {
    /// Text, trimmed, not blank; `format` names the shape it must also have.
    Text {
        #[serde(skip_serializing_if = "Option::is_none")]
        format: Option<&'static str>,
    },
    /// An integer from `min` to `max`.
    Integer { min: Value, max: Value },
    /// One of `choices`, in any case.
    Choice { choices: Vec<&'static str> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub redis_url: String,
    pub listen_addr: SocketAddr,
    /// Servers, each on its own OS thread with its own listener, runtime and Redis connection.
    pub worker_threads: usize,
    pub stream_key: String,
    pub stream_shards: u32,
    pub stream_group: String,
    pub stream_high_water: u64,
    /// Most requests one stream entry carries (`append.rs`); 1 writes one entry per request.
    pub entry_max_requests: usize,
    pub backlog_check: Duration,
    pub retry_after_seconds: u32,
    pub token_index_key: String,
    pub token_cache_ttl: Duration,
    pub limits: Limits,
    pub redis_timeout: Duration,
    /// `REDIS_URL` is a seed node of a Redis Cluster: cluster-aware clients, every command on one slot.
    pub redis_cluster: bool,
    /// Replicas that must have each stream entry before its requests are answered (Redis `WAIT`); 0: none.
    pub stream_wait_replicas: u32,
    /// How long an append waits for them before its requests are refused.
    pub stream_wait_timeout: Duration,
    pub request_timeout: Duration,
    /// A `tracing` level name: trace, debug, info, warn or error.
    pub log_level: &'static str,
    pub log_format: LogFormat,
    pub mqtt: MqttSettings,
    /// Per-device rate limits (`docs/design.md`, "Fair share per device").
    pub rate_limit: crate::ratelimit::Settings,
}

/// The MQTT listener's settings (`docs/design.md`, "MQTT"); `addr` `None` turns it off.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub addr: Option<SocketAddr>,
    pub max_connections: usize,
    /// QoS 1 PUBLISHes a connection may have unacknowledged (MQTT 5 "Receive Maximum").
    pub receive_maximum: u16,
    /// The longest keep-alive granted; 0 or longer asked for is cut to this.
    pub max_keep_alive: Duration,
    pub connect_timeout: Duration,
    /// How often the tokens of open connections are looked up again.
    pub auth_recheck: Duration,
    /// MQTT over TLS on a listener of its own, when `VT_MQTT_TLS_ADDR` is set.
    pub tls: Option<MqttTls>,
}

/// Where MQTT over TLS listens, and the PEM files of its certificate chain and key.
#[derive(Debug, Clone)]
pub struct MqttTls {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(&lookup))
    }

    /// Every variable `from_env` reads, with its default and what it accepts.
    pub fn settings() -> Vec<SettingSpec> {
        let unset = |_: &str| None;
        let env = Env::new(&unset);
        Self::read(&env).expect("the defaults are valid settings");
        env.seen.into_inner()
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let config = Self::read_each(env)?;
        if config.redis_cluster {
            cluster_url_problem(&config.redis_url).map_or(Ok(()), |r| Err(err("REDIS_URL", &config.redis_url, r)))?;
        }
        Ok(config)
    }

    fn read_each(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            redis_url: env.checked("REDIS_URL", "redis://127.0.0.1:6379/0", "a Redis URL", redis_url_problem)?,
            listen_addr: env.parsed("VT_LISTEN_ADDR", "0.0.0.0:8080", "a socket address like 0.0.0.0:8080")?,
            worker_threads: env.int("VT_WORKER_THREADS", usable_cpus(), 1, MAX_WORKER_THREADS)?,
            stream_key: env.string("VT_STREAM_KEY", "vt:telemetry")?,
            stream_shards: env.int("VT_STREAM_SHARDS", 1, 1, 1024)?,
            stream_group: env.string("VT_STREAM_GROUP", "aggregators")?,
            stream_high_water: env.int("VT_STREAM_HIGH_WATER", 100_000, 1, u64::MAX)?,
            entry_max_requests: env.int("VT_STREAM_ENTRY_MAX_REQUESTS", 256, 1, 4096)?,
            backlog_check: Duration::from_millis(env.int("VT_BACKLOG_CHECK_MS", 250, 1, 60_000)?),
            retry_after_seconds: env.int("VT_RETRY_AFTER_SECONDS", 1, 1, 3600)?,
            token_index_key: env.string("VT_TOKEN_INDEX_KEY", "vt:device-tokens")?,
            token_cache_ttl: Duration::from_secs(env.int("VT_TOKEN_CACHE_SECONDS", 2, 0, 5)?),
            limits: Limits {
                max_body_bytes: env.int("VT_MAX_BODY_BYTES", 1_048_576, 64, 1 << 30)?,
                max_readings: env.int("VT_MAX_READINGS", 10_000, 1, 10_000_000)?,
                max_future_skew_seconds: env.int("VT_MAX_FUTURE_SKEW", 300, 0, 31_536_000)?,
                retention_days: env.int("VT_RETENTION_DAYS", 30, 1, 36_500)?,
            },
            redis_timeout: Duration::from_millis(env.int("VT_REDIS_TIMEOUT_MS", 1000, 1, 600_000)?),
            redis_cluster: env.flag("VT_REDIS_CLUSTER", false)?,
            stream_wait_replicas: env.int("VT_STREAM_WAIT_REPLICAS", 0, 0, 16)?,
            stream_wait_timeout: Duration::from_millis(env.int("VT_STREAM_WAIT_TIMEOUT_MS", 500, 1, 60_000)?),
            request_timeout: Duration::from_millis(env.int("VT_REQUEST_TIMEOUT_MS", 10_000, 1, 3_600_000)?),
            log_level: env.choice("VT_LOG_LEVEL", "info", LOG_LEVELS)?,
            log_format: env.choice("VT_LOG_FORMAT", "text", LOG_FORMATS)?,
            mqtt: MqttSettings {
                addr: env.optional_addr("VT_MQTT_ADDR", "a socket address like 0.0.0.0:1883, or empty for no MQTT")?,
                max_connections: env.int("VT_MQTT_MAX_CONNECTIONS", 50_000, 1, 10_000_000)?,
                receive_maximum: env.int("VT_MQTT_RECEIVE_MAXIMUM", 256, 1, u16::MAX)?,
                max_keep_alive: Duration::from_secs(env.int("VT_MQTT_MAX_KEEP_ALIVE_SECONDS", 300, 5, 65_535)?),
                connect_timeout: Duration::from_millis(env.int("VT_MQTT_CONNECT_TIMEOUT_MS", 10_000, 100, 600_000)?),
                auth_recheck: Duration::from_millis(env.int("VT_MQTT_AUTH_RECHECK_MS", 1000, 100, 4000)?),
                tls: mqtt_tls(env)?,
            },
            rate_limit: {
                let replicas = env.int("VT_RATE_LIMIT_REPLICAS", 1, 1, 10_000)?;
                let live = env.int("VT_RATE_LIMIT", 1000, 0, MAX_RATE)?;
                let live_burst = env.int("VT_RATE_LIMIT_BURST", 5000, 1, MAX_RATE)?;
                let backfill = env.int("VT_BACKFILL_RATE_LIMIT", 10_000, 0, MAX_RATE)?;
                let backfill_burst = env.int("VT_BACKFILL_RATE_LIMIT_BURST", 100_000, 1, MAX_RATE)?;
                let backfill_after: i64 = env.int("VT_BACKFILL_AFTER_SECONDS", 600, 1, 31_536_000)?;
                crate::ratelimit::Settings {
                    live: crate::ratelimit::Rate::new(live, live_burst, replicas),
                    backfill: crate::ratelimit::Rate::new(backfill, backfill_burst, replicas),
                    backfill_after_ms: backfill_after * 1000,
                }
            },
        })
    }

    /// The Redis key of every shard, index = shard number.
    pub fn shard_keys(&self) -> Vec<String> {
        crate::stream::shard_keys(&self.stream_key, self.stream_shards)
    }
}

/// MQTT over TLS: its address turns it on, and then needs both files.
fn mqtt_tls(env: &Env) -> Result<Option<MqttTls>, ConfigError> {
    let addr = env.optional_addr("VT_MQTT_TLS_ADDR", "a socket address like 0.0.0.0:8883, or empty for no TLS")?;
    let cert = env.optional_path("VT_MQTT_TLS_CERT", "the PEM file of the certificate chain, server first");
    let key = env.optional_path("VT_MQTT_TLS_KEY", "the PEM file of the certificate's private key");
    let Some(addr) = addr else { return Ok(None) };
    let needed = |var: &'static str| err(var, "", "required when VT_MQTT_TLS_ADDR is set");
    Ok(Some(MqttTls {
        addr,
        cert: cert.ok_or_else(|| needed("VT_MQTT_TLS_CERT"))?,
        key: key.ok_or_else(|| needed("VT_MQTT_TLS_KEY"))?,
    }))
}

/// `tracing` level names by the names accepted: Python's too, since the services share the variable.
const LOG_LEVELS: &[(&str, &str)] = &[
    ("trace", "trace"),
    ("debug", "debug"),
    ("info", "info"),
    ("warn", "warn"),
    ("warning", "warn"),
    ("error", "error"),
    ("critical", "error"),
];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

fn redis_url_problem(url: &str) -> Option<String> {
    redis::Client::open(url).err().map(|e| format!("not a Redis URL: {e}"))
}

/// A Redis Cluster has only database 0: a URL naming another would silently write elsewhere than meant.
fn cluster_url_problem(url: &str) -> Option<String> {
    use redis::IntoConnectionInfo;
    let db = url.into_connection_info().ok()?.redis_settings().db();
    (db != 0)
        .then(|| format!("a Redis Cluster has only database 0, the URL names database {db} (VT_REDIS_CLUSTER=true)"))
}

const MAX_WORKER_THREADS: usize = 256;
/// Largest rate or burst, readings (a billion a second is no limit in practice).
const MAX_RATE: u64 = 1_000_000_000;

/// CPUs this process may use: `available_parallelism` honours the affinity mask
/// and cgroup CPU quotas, so a container limited to 2 CPUs gets 2 servers, not one per host core.
fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(MAX_WORKER_THREADS)
}

fn err(var: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { var, value: value.to_owned(), reason: reason.into() }
}

/// The variables, read through a lookup; each read is recorded (`seen`) for `Config::settings`.
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    seen: RefCell<Vec<SettingSpec>>,
}

impl<'a> Env<'a> {
    fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup, seen: RefCell::new(Vec::new()) }
    }

    fn record(&self, name: &'static str, default: impl Into<Value>, accepts: Accepts) {
        self.seen.borrow_mut().push(SettingSpec { name, default: default.into(), accepts });
    }

    /// The variable's value; an empty one counts as unset (`VT_X=` in an env file).
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.is_empty())
    }

    fn text(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        match self.get(var) {
            None => Ok(default.to_owned()),
            Some(v) if v.trim().is_empty() => Err(err(var, &v, "must not be empty")),
            Some(v) => Ok(v.trim().to_owned()),
        }
    }

    fn string(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        self.record(var, default, Accepts::Text { format: None });
        self.text(var, default)
    }

    /// Text that `problem` finds nothing wrong with (its answer is the reason otherwise).
    fn checked(
        &self,
        var: &'static str,
        default: &str,
        format: &'static str,
        problem: fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        self.record(var, default, Accepts::Text { format: Some(format) });
        let raw = self.text(var, default)?;
        problem(&raw).map_or(Ok(raw.clone()), |reason| Err(err(var, &raw, reason)))
    }

    fn parsed<T: FromStr>(&self, var: &'static str, default: &str, expected: &'static str) -> Result<T, ConfigError> {
        self.record(var, default, Accepts::Text { format: Some(expected) });
        let raw = self.text(var, default)?;
        raw.parse().map_err(|_| err(var, &raw, format!("expected {expected}")))
    }

    /// An address, or `None` when the variable is unset or empty (the feature is off).
    fn optional_addr(&self, var: &'static str, expected: &'static str) -> Result<Option<SocketAddr>, ConfigError> {
        self.record(var, "", Accepts::Text { format: Some(expected) });
        match self.get(var) {
            None => Ok(None),
            Some(raw) => raw.trim().parse().map(Some).map_err(|_| err(var, &raw, format!("expected {expected}"))),
        }
    }

    /// A file's path, or `None` when the variable is unset or empty.
    fn optional_path(&self, var: &'static str, expected: &'static str) -> Option<PathBuf> {
        self.record(var, "", Accepts::Text { format: Some(expected) });
        self.get(var).map(|raw| raw.trim().to_owned()).filter(|raw| !raw.is_empty()).map(PathBuf::from)
    }

    fn int<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display + Into<Value>,
    {
        self.record(var, default, Accepts::Integer { min: min.into(), max: max.into() });
        let Some(raw) = self.get(var) else { return Ok(default) };
        let expected = || err(var, &raw, format!("expected an integer from {min} to {max}"));
        let value: T = raw.trim().parse().map_err(|_| expected())?;
        if value < min || value > max {
            return Err(expected());
        }
        Ok(value)
    }

    /// A boolean, as the Python parts read one: 1/true/yes/on or 0/false/no/off, in any case.
    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        const EXPECTED: &str = "true or false (also 1/0, yes/no, on/off)";
        self.record(var, if default { "true" } else { "false" }, Accepts::Text { format: Some(EXPECTED) });
        let Some(raw) = self.get(var) else { return Ok(default) };
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(err(var, &raw, format!("expected {EXPECTED}"))),
        }
    }

    /// The value of the option named (in any case) by the variable.
    fn choice<T: Copy>(
        &self,
        var: &'static str,
        default: &str,
        options: &[(&'static str, T)],
    ) -> Result<T, ConfigError> {
        let names: Vec<&'static str> = options.iter().map(|(name, _)| *name).collect();
        self.record(var, default, Accepts::Choice { choices: names.clone() });
        let raw = self.text(var, default)?;
        let wanted = raw.to_ascii_lowercase();
        options
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| *value)
            .ok_or_else(|| err(var, &raw, format!("expected one of {}", names.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let owned: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_lookup(move |name| owned.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let c = with(&[]).unwrap();
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.listen_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.worker_threads, std::thread::available_parallelism().unwrap().get().min(256));
        assert_eq!(c.stream_key, "vt:telemetry");
        assert_eq!(c.stream_shards, 1);
        assert_eq!(c.stream_group, "aggregators");
        assert_eq!(c.stream_high_water, 100_000);
        assert_eq!(c.backlog_check, Duration::from_millis(250));
        assert_eq!(c.retry_after_seconds, 1);
        assert_eq!(c.token_index_key, "vt:device-tokens");
        assert_eq!(c.token_cache_ttl, Duration::from_secs(2));
        assert_eq!(c.limits.max_body_bytes, 1_048_576);
        assert_eq!(c.limits.max_readings, 10_000);
        assert_eq!(c.limits.max_future_skew_seconds, 300);
        assert_eq!(c.limits.retention_days, 30);
        assert_eq!(c.redis_timeout, Duration::from_secs(1));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.mqtt.addr, None);
        assert_eq!(c.mqtt.max_connections, 50_000);
        assert_eq!(c.mqtt.receive_maximum, 256);
        assert_eq!(c.mqtt.max_keep_alive, Duration::from_mins(5));
        assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.mqtt.auth_recheck, Duration::from_secs(1));
        assert!(c.mqtt.tls.is_none());
        let rl = c.rate_limit;
        assert_eq!(rl.live.map(|r| (r.per_second, r.burst)), Some((1000, 5000)));
        assert_eq!(rl.backfill.map(|r| (r.per_second, r.burst)), Some((10_000, 100_000)));
        assert_eq!(rl.backfill_after_ms, 600_000);
    }

    #[test]
    fn cluster_and_wait_settings() {
        let c = with(&[]).unwrap();
        assert!(!c.redis_cluster);
        assert_eq!((c.stream_wait_replicas, c.stream_wait_timeout), (0, Duration::from_millis(500)));
        let c = with(&[
            ("VT_REDIS_CLUSTER", " Yes"),
            ("REDIS_URL", "redis://127.0.0.1:7000"),
            ("VT_STREAM_WAIT_REPLICAS", "2"),
            ("VT_STREAM_WAIT_TIMEOUT_MS", "60000"),
        ])
        .unwrap();
        assert!(c.redis_cluster);
        assert_eq!((c.stream_wait_replicas, c.stream_wait_timeout), (2, Duration::from_mins(1)));
        assert!(!with(&[("VT_REDIS_CLUSTER", "off")]).unwrap().redis_cluster);
        assert_eq!(with(&[("VT_REDIS_CLUSTER", "maybe")]).unwrap_err().var, "VT_REDIS_CLUSTER");
        assert_eq!(with(&[("VT_STREAM_WAIT_REPLICAS", "17")]).unwrap_err().var, "VT_STREAM_WAIT_REPLICAS");
        assert_eq!(with(&[("VT_STREAM_WAIT_TIMEOUT_MS", "0")]).unwrap_err().var, "VT_STREAM_WAIT_TIMEOUT_MS");
        // Database 0 only on a cluster; any database on a single server.
        let db3 = [("VT_REDIS_CLUSTER", "true"), ("REDIS_URL", "redis://127.0.0.1:7000/3")];
        let e = with(&db3).unwrap_err();
        assert_eq!(e.var, "REDIS_URL");
        assert!(e.reason.contains("only database 0"), "{e}");
        assert!(with(&[("VT_REDIS_CLUSTER", "true"), ("REDIS_URL", "redis://h:7000/0")]).is_ok());
        assert!(with(&[("REDIS_URL", "redis://127.0.0.1:7000/3")]).is_ok());
    }

    #[test]
    fn rate_zero_turns_a_limit_off() {
        let c = with(&[("VT_RATE_LIMIT", "0"), ("VT_BACKFILL_RATE_LIMIT", "0")]).unwrap();
        assert_eq!(c.rate_limit.live, None);
        assert_eq!(c.rate_limit.backfill, None);
    }

    #[test]
    fn mqtt_over_tls_takes_its_address_and_both_files() {
        let c = with(&[
            ("VT_MQTT_TLS_ADDR", "0.0.0.0:8883"),
            ("VT_MQTT_TLS_CERT", "/tls/tls.crt"),
            ("VT_MQTT_TLS_KEY", " /tls/tls.key "),
        ])
        .unwrap();
        let tls = c.mqtt.tls.unwrap();
        assert_eq!(tls.addr, "0.0.0.0:8883".parse().unwrap());
        assert_eq!(tls.cert, PathBuf::from("/tls/tls.crt"));
        assert_eq!(tls.key, PathBuf::from("/tls/tls.key"));
        // The files alone do nothing: the address turns TLS on.
        assert!(with(&[("VT_MQTT_TLS_CERT", "/tls/tls.crt")]).unwrap().mqtt.tls.is_none());
    }

    #[test]
    fn mqtt_over_tls_without_a_file_names_the_missing_variable() {
        let e = with(&[("VT_MQTT_TLS_ADDR", "0.0.0.0:8883"), ("VT_MQTT_TLS_CERT", "/tls/tls.crt")]).unwrap_err();
        assert_eq!(e.var, "VT_MQTT_TLS_KEY");
        let e = with(&[("VT_MQTT_TLS_ADDR", "0.0.0.0:8883"), ("VT_MQTT_TLS_KEY", "/k")]).unwrap_err();
        assert_eq!(e.var, "VT_MQTT_TLS_CERT");
        assert!(e.to_string().contains("required when VT_MQTT_TLS_ADDR is set"), "{e}");
    }

    #[test]
    fn settings_list_each_variable_read_with_its_default_and_range() {
        let specs = Config::settings();
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 38);
        assert_eq!(names.iter().collect::<std::collections::HashSet<_>>().len(), names.len());
        let shards = specs.iter().find(|s| s.name == "VT_STREAM_SHARDS").unwrap();
        assert_eq!(shards.default, 1);
        assert_eq!(shards.accepts, Accepts::Integer { min: 1.into(), max: 1024.into() });
        let level = specs.iter().find(|s| s.name == "VT_LOG_LEVEL").unwrap();
        assert_eq!(level.default, "info");
        let Accepts::Choice { choices } = &level.accepts else { panic!("{level:?}") };
        assert!(choices.contains(&"warning") && choices.contains(&"trace"));
        let json = serde_json::to_value(&specs).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"name": "REDIS_URL", "default": "redis://127.0.0.1:6379/0",
                                               "kind": "text", "format": "a Redis URL"})
        );
    }

    #[test]
    fn an_empty_variable_takes_the_default() {
        let c = with(&[("VT_MAX_READINGS", ""), ("VT_STREAM_KEY", ""), ("VT_LOG_FORMAT", "")]).unwrap();
        assert_eq!(c.limits.max_readings, 10_000);
        assert_eq!(c.stream_key, "vt:telemetry");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn values_are_read() {
        let c = with(&[
            ("VT_STREAM_SHARDS", "4"),
            ("VT_TOKEN_CACHE_SECONDS", "0"),
            ("VT_LOG_FORMAT", "JSON"),
            ("VT_LOG_LEVEL", "WARNING"),
            ("VT_LISTEN_ADDR", "127.0.0.1:9000"),
            ("VT_WORKER_THREADS", "3"),
            ("VT_MQTT_ADDR", "127.0.0.1:1883"),
        ])
        .unwrap();
        assert_eq!(c.stream_shards, 4);
        assert_eq!(c.token_cache_ttl, Duration::ZERO);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.listen_addr.port(), 9000);
        assert_eq!(c.worker_threads, 3);
        assert_eq!(c.mqtt.addr, Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(c.shard_keys(), ["vt:telemetry:{0}", "vt:telemetry:{1}", "vt:telemetry:{2}", "vt:telemetry:{3}"]);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let cases = [
            ("VT_TOKEN_CACHE_SECONDS", "6"),
            ("VT_TOKEN_CACHE_SECONDS", "-1"),
            ("VT_STREAM_SHARDS", "0"),
            ("VT_STREAM_SHARDS", "two"),
            ("VT_MAX_BODY_BYTES", "1.5"),
            ("VT_LISTEN_ADDR", "localhost"),
            ("VT_LOG_FORMAT", "xml"),
            ("VT_LOG_LEVEL", "loud"),
            ("VT_STREAM_KEY", " "),
            ("REDIS_URL", "http://nope"),
            ("VT_REDIS_TIMEOUT_MS", "0"),
            ("VT_WORKER_THREADS", "0"),
            ("VT_WORKER_THREADS", "257"),
            ("VT_WORKER_THREADS", "auto"),
            ("VT_MQTT_ADDR", "1883"),
            ("VT_MQTT_RECEIVE_MAXIMUM", "0"),
            ("VT_MQTT_AUTH_RECHECK_MS", "5000"),
            ("VT_RATE_LIMIT", "-1"),
            ("VT_RATE_LIMIT_BURST", "0"),
            ("VT_RATE_LIMIT_REPLICAS", "0"),
            ("VT_BACKFILL_AFTER_SECONDS", "0"),
        ];
        for (var, value) in cases {
            let e = with(&[(var, value)]).expect_err(var);
            assert_eq!(e.var, var, "{var}={value:?}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }
}
