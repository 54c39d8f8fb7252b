//! `VT_STREAM_WAIT_REPLICAS` against a real master and replica: the entry is
//! acknowledged once enough replicas have it, refused (503, counted) when fewer
//! confirm in time; and the per-device counters land as before, hash by hash.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::time::{Duration, Instant};

use common::{config, field, now_ms, post_ingest, serve, RedisServer};
use redis::Commands;

/// A master with one replica in sync.
fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::start();
    // Loaded straight from the socket: the replica writes no snapshot file into the crate's folder.
    let replica = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &master.port.to_string(),
        "--repl-diskless-load",
        "swapdb",
    ]);
    let mut conn = master.conn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut conn).unwrap();
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never came online: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (master, replica)
}

#[tokio::test]
async fn an_entry_on_enough_replicas_is_202_on_too_few_503_and_counted() {
    if !common::redis_available() {
        return;
    }
    let (master, _replica) = master_and_replica();
    let mut conn = master.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_w"), "3:active").unwrap();
    // Both ways to the stream: one XADD per request, and grouped entries.
    for most in ["1", "256"] {
        let (addr, _) = serve(config(
            &master,
            // A generous wait: a loaded test machine may be slow to pass the entry on.
            &[
                ("VT_STREAM_WAIT_REPLICAS", "1"),
                ("VT_STREAM_WAIT_TIMEOUT_MS", "5000"),
                ("VT_STREAM_ENTRY_MAX_REQUESTS", most),
            ],
        ))
        .await;
        let reply = post_ingest(addr, "vtd_w", r#"{"a":1}"#).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let stored: usize = conn.xlen("vt:telemetry").unwrap();
    assert_eq!(stored, 2);

    for most in ["1", "256"] {
        let extra = [
            ("VT_STREAM_WAIT_REPLICAS", "2"),
            ("VT_STREAM_WAIT_TIMEOUT_MS", "300"),
            ("VT_STREAM_ENTRY_MAX_REQUESTS", most),
        ];
        let (addr, state) = serve(config(&master, &extra)).await;
        let sent = Instant::now();
        let reply = post_ingest(addr, "vtd_w", r#"{"a":1}"#).await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(sent.elapsed() >= Duration::from_millis(300), "answered before WAIT's timeout: {:?}", sent.elapsed());
        let text = state.metrics.render();
        assert!(text.contains("visiontrack_ingestor_stream_wait_short_total"), "{text}");
    }
    // Refused, but in the stream: a resend is a duplicate the aggregator drops.
    let stored: usize = conn.xlen("vt:telemetry").unwrap();
    assert_eq!(stored, 4);
}

#[tokio::test]
async fn device_counters_land_in_the_total_and_the_bucket_hash() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_s"), "12:active").unwrap();
    let (addr, state) = serve(config(&redis, &[])).await;
    let ts = now_ms() - 1000;
    assert_eq!(post_ingest(addr, "vtd_s", &format!(r#"{{"ts":{ts},"values":{{"a":1,"b":2}}}}"#)).await.status, 202);
    assert_eq!(post_ingest(addr, "vtd_s", r#"{"a":"x"}"#).await.status, 400);
    // The counters are the handling thread's; this test's runtime is that thread.
    visiontrack_ingestor::device_stats::flush(&state).await;
    let total: std::collections::HashMap<String, String> = conn.hgetall("vt:device-stats:12:total").unwrap();
    assert_eq!(total["received"], "2");
    assert_eq!(total["accepted"], "1");
    assert_eq!(total["readings"], "2");
    assert_eq!(total["rejected:invalid_value"], "1");
    assert_eq!(total["newest_ts_ms"], ts.to_string());
    let buckets: Vec<String> = conn.keys("vt:device-stats:12:b:*").unwrap();
    assert_eq!(buckets.len(), 1);
    let bucket: std::collections::HashMap<String, String> = conn.hgetall(&buckets[0]).unwrap();
    assert_eq!((bucket["received"].as_str(), bucket.get("newest_ts_ms")), ("2", None));
    let ttl: i64 = conn.ttl(&buckets[0]).unwrap();
    assert!(ttl > 3000, "{ttl}");
}
