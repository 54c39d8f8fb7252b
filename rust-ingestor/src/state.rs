//! State of one server thread, shared by its handlers, and the one way they talk to Redis.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::FromRedisValue;
use redis::IntoConnectionInfo;

use crate::append::Appender;
use crate::auth::TokenCache;
use crate::cluster;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics;
use crate::ratelimit::Limiter;
use crate::stream::Shard;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub tokens: TokenCache,
    /// Shared by every server thread's state: one sampler keeps the backlogs for all.
    pub shards: Arc<[Shard]>,
    /// Shared by every server thread's state: a device's buckets are the process's.
    pub limiter: Arc<Limiter>,
    pub metrics: PrometheusHandle,
    /// Writes accepted readings to the stream, several requests to an entry when they come together.
    pub appender: Appender,
    redis: Link,
}

/// One way to Redis (reconnected when lost) and the deadline of every command on it.
#[derive(Clone)]
pub struct Link {
    connection: Connection,
    timeout: Duration,
    /// Replicas each stream entry must reach before it counts as written (`VT_STREAM_WAIT_REPLICAS`).
    wait: Option<Wait>,
}

/// A single server (the default) or a Redis Cluster (`VT_REDIS_CLUSTER`).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

#[derive(Clone, Copy)]
struct Wait {
    replicas: u32,
    timeout: Duration,
}

/// Why an append is not acknowledged.
#[derive(Debug)]
pub enum AppendFailure {
    /// The XADD failed or its answer was lost: the entry may be in or not.
    Failed(RedisFailure),
    /// The entry `id` is in the stream, but fewer replicas than asked for confirmed it in time.
    ShortOfReplicas { id: String },
}

impl Link {
    /// Runs one command with the deadline (which also bounds the wait for a
    /// reconnect, not only the reply).
    pub async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisFailure> {
        match &self.connection {
            Connection::Single(c) => within(self.timeout, cmd.query_async(&mut c.clone())).await,
            Connection::Cluster(c) => within(self.timeout, cmd.query_async(&mut c.clone())).await,
        }
    }

    /// Whether Redis answers `PING`. On a cluster one node, any: a master down until its replica takes
    /// over costs the requests of its slots, it must not make every ingestor unready at once.
    pub async fn ping(&self) -> Result<(), RedisFailure> {
        let ping = redis::cmd("PING");
        match &self.connection {
            Connection::Single(_) => self.run::<String>(&ping).await.map(drop),
            Connection::Cluster(c) => {
                let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                within::<redis::Value>(self.timeout, c.clone().route_command(ping, any)).await.map(drop)
            }
        }
    }

    /// Whether appends wait for replicas (`VT_STREAM_WAIT_REPLICAS` > 0).
    pub fn waits_for_replicas(&self) -> bool {
        self.wait.is_some()
    }

    /// Runs the XADD `xadd` of stream `key` and returns the entry id; with
    /// `VT_STREAM_WAIT_REPLICAS`, then `WAIT`s on the same connection to the same
    /// node (WAIT counts the writes of the connection it comes on).
    pub async fn append(&self, key: &str, xadd: &redis::Cmd) -> Result<String, AppendFailure> {
        let Some(wait) = self.wait else { return self.run(xadd).await.map_err(AppendFailure::Failed) };
        let mut wait_cmd = redis::cmd("WAIT");
        wait_cmd.arg(wait.replicas).arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
        let deadline = self.timeout + wait.timeout;
        let (id, replicas) = match &self.connection {
            Connection::Single(c) => {
                // One pipeline: both go out back to back on the one connection.
                let mut pipe = redis::pipe();
                pipe.add_command(xadd.clone()).add_command(wait_cmd);
                within::<(String, i64)>(deadline, pipe.query_async(&mut c.clone()))
                    .await
                    .map_err(AppendFailure::Failed)?
            }
            Connection::Cluster(c) => {
                let id: String = self.run(xadd).await.map_err(AppendFailure::Failed)?;
                let mut c = c.clone();
                let waited = within::<redis::Value>(deadline, c.route_command(wait_cmd, cluster::master_of(key))).await;
                match waited.and_then(|v| i64::from_redis_value(v).map_err(|e| RedisFailure::Redis(e.into()))) {
                    Ok(n) => (id, n),
                    Err(e) => {
                        // The entry is in; only its replicas are unknown.
                        redis_failed("wait", &e);
                        return Err(AppendFailure::ShortOfReplicas { id });
                    }
                }
            }
        };
        if replicas < i64::from(wait.replicas) {
            return Err(AppendFailure::ShortOfReplicas { id });
        }
        Ok(id)
    }
}

/// A reply within `deadline`, else a timeout failure.
async fn within<T: FromRedisValue>(
    deadline: Duration,
    reply: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisFailure> {
    match tokio::time::timeout(deadline, reply).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RedisFailure::Timeout(deadline)),
    }
}

/// Epoch seconds of the last Redis error logged, to log at most one a second for
/// the whole process, whatever the number of server threads. Touched only on errors.
static LAST_ERROR_LOG: AtomicI64 = AtomicI64::new(0);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Why a Redis command gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Counts a failed command and logs it, at most once a second for the whole process.
pub fn redis_failed(op: &'static str, error: &RedisFailure) {
    metrics::redis_error(op);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if LAST_ERROR_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(op, error = %error, "redis command failed");
    }
}

/// The connection to a single Redis server: one multiplexed connection that
/// pipelines concurrent commands and reconnects in the background.
fn single(config: &Config, response_timeout: Duration) -> Result<ConnectionManager, redis::RedisError> {
    // redis-rs leaves Nagle's algorithm on, which holds a command written while
    // an earlier one is unacknowledged until that ACK comes; request and reply
    // gain nothing from the wait (Redis sets TCP_NODELAY on its side too).
    let info = config
        .redis_url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(config.redis_timeout))
        // Few quick retries: a request must not wait on a long reconnect loop;
        // the next command starts a new attempt anyway.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
        .set_pipeline_buffer_size(4096);
    ConnectionManager::new_lazy_with_config(client, manager_config)
}

impl AppState {
    /// Builds the state; Redis is connected lazily, so the service starts (and
    /// answers 503) while Redis is still down.
    pub fn new(config: Config, metrics: PrometheusHandle) -> Result<Self, redis::RedisError> {
        let shards = config.shard_keys().into_iter().map(Shard::new).collect();
        let limiter = Arc::new(Limiter::new(config.rate_limit));
        Self::build(config, metrics, shards, limiter)
    }

    /// The state of another server thread: its own Redis connection and token
    /// cache, the same backlog figures (sampled once for the process) and the same rate-limit buckets.
    pub fn sharing_backlog(&self) -> Result<Self, redis::RedisError> {
        Self::build(self.config.clone(), self.metrics.clone(), self.shards.clone(), self.limiter.clone())
    }

    fn build(
        config: Config,
        metrics: PrometheusHandle,
        shards: Arc<[Shard]>,
        limiter: Arc<Limiter>,
    ) -> Result<Self, redis::RedisError> {
        let wait = (config.stream_wait_replicas > 0)
            .then_some(Wait { replicas: config.stream_wait_replicas, timeout: config.stream_wait_timeout });
        // The clients' own reply deadline must let a WAIT run its course; `Link` bounds every other command.
        let response_timeout = config.redis_timeout + wait.map_or(Duration::ZERO, |w| w.timeout);
        let connection = if config.redis_cluster {
            Connection::Cluster(cluster::connect(&config.redis_url, config.redis_timeout, response_timeout)?)
        } else {
            Connection::Single(single(&config, response_timeout)?)
        };
        let redis = Link { connection, timeout: config.redis_timeout, wait };
        // Three quarters of the request's deadline: long enough for a restarted Redis to answer (about
        // 4 s on Kubernetes), short enough that a write in doubt is answered before the request times out.
        let settle_budget = config.request_timeout * 3 / 4;
        let appender = Appender::new(shards.clone(), config.entry_max_requests, redis.clone(), settle_budget);
        Ok(Self(Arc::new(Inner {
            tokens: TokenCache::new(config.token_cache_ttl),
            config,
            shards,
            limiter,
            metrics,
            appender,
            redis,
        })))
    }

    /// `PING`, as [`Link::ping`]; a failure is counted and logged.
    pub async fn ping(&self) -> Result<(), RedisFailure> {
        self.redis.ping().await.inspect_err(|e| self.redis_failed("ping", e))
    }

    /// Runs one command on this thread's connection, with the configured deadline.
    pub async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisFailure> {
        self.redis.run(cmd).await
    }

    /// Like [`run`](Self::run) for request handlers: any failure is counted,
    /// logged (at most once a second) and becomes 503 `unavailable`.
    pub async fn redis<T: FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T, ApiError> {
        self.run(cmd).await.map_err(|e| {
            self.redis_failed(op, &e);
            self.unavailable("storage is unavailable")
        })
    }

    pub fn redis_failed(&self, op: &'static str, error: &RedisFailure) {
        redis_failed(op, error);
    }

    pub fn unavailable(&self, message: &'static str) -> ApiError {
        ApiError::Unavailable { message, retry_after_seconds: self.config.retry_after_seconds }
    }
}
