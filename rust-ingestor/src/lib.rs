//! VisionTrack ingestor: the device-facing write path (`POST /api/ingest`,
//! ThingsBoard's `POST /api/v1/{token}/telemetry`, and MQTT 3.1.1/5).
//!
//! A request is authenticated against the Redis token index, validated by the
//! pure rules of `docs/contracts.md` (section 3) and appended to the telemetry
//! stream (requests that arrive together share an entry); it is answered 202
//! only once Redis confirmed the write.

pub mod append;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod device_stats;
pub mod error;
pub mod in_doubt;
pub mod metrics;
pub mod mqtt;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;
pub mod stream;
pub mod timefmt;
pub mod validate;

pub use config::Config;
pub use routes::router;
pub use state::AppState;
