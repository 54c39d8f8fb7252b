//! The service against a real redis-server: the stream entry, auth from the
//! token index, token rotation, Redis going away, backpressure and sharding.
//! Skipped, saying so, when redis-server is not installed; under `CI=true` that fails instead.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::time::{Duration, Instant};

use common::{config, eventually, field, now_ms, post_ingest, request, serve, RedisServer};
use redis::Commands;
use serde_json::json;

type Entry = (String, Vec<(String, String)>);

fn entries(conn: &mut redis::Connection, key: &str) -> Vec<Entry> {
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(conn).unwrap();
    raw.into_iter().map(|(id, flat)| (id, flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect())).collect()
}

fn get<'a>(entry: &'a Entry, name: &str) -> &'a str {
    entry.1.iter().find(|(k, _)| k == name).map_or_else(|| panic!("no field {name} in {entry:?}"), |(_, v)| v)
}

#[tokio::test]
async fn an_accepted_request_is_exactly_one_entry_with_the_contract_fields() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_one"), "42:active").unwrap();
    let (addr, _) = serve(config(&redis, &[])).await;

    let ts = now_ms() - 1000;
    let before = now_ms();
    let reply = post_ingest(
        addr,
        "vtd_one",
        &format!(r#"[{{"ts":{ts},"values":{{"temperature":21.5,"door":true}}}},{{"rpm":900}}]"#),
    )
    .await;
    let after = now_ms();
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json(), json!({"accepted": 3}));

    let all = entries(&mut conn, "vt:telemetry");
    assert_eq!(all.len(), 1, "one XADD per request: {all:?}");
    let e = &all[0];
    let names: Vec<&str> = e.1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["v", "d", "r", "at"]);
    assert_eq!(get(e, "v"), "1");
    assert_eq!(get(e, "d"), "42");
    let at: i64 = get(e, "at").parse().unwrap();
    assert!((before..=after).contains(&at), "at={at} not in {before}..={after}");
    let r: serde_json::Value = serde_json::from_str(get(e, "r")).unwrap();
    assert_eq!(r, json!([["temperature", ts, 21.5], ["door", ts, 1], ["rpm", at, 900]]));
    assert!(!get(e, "r").contains(' '), "compact JSON");

    // A rejected request writes nothing.
    let reply = post_ingest(addr, "vtd_one", r#"{"temperature":"hot"}"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(entries(&mut conn, "vt:telemetry").len(), 1);
}

#[tokio::test]
async fn unknown_tokens_are_401_and_disabled_devices_403() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_off"), "9:disabled").unwrap();
    let _: () = conn.hset("vt:device-tokens", field("vtd_bad"), "garbage").unwrap();
    let (addr, _) = serve(config(&redis, &[])).await;

    let reply = post_ingest(addr, "vtd_nobody", r#"{"a":1}"#).await;
    assert_eq!((reply.status, reply.json()["error"].as_str()), (401, Some("unauthorized")));
    let reply = post_ingest(addr, "vtd_off", r#"{"a":1}"#).await;
    assert_eq!((reply.status, reply.json()["error"].as_str()), (403, Some("forbidden")));
    let reply = post_ingest(addr, "vtd_bad", r#"{"a":1}"#).await;
    assert_eq!(reply.status, 401, "a malformed index value is not a device");
    let xlen: usize = conn.xlen("vt:telemetry").unwrap();
    assert_eq!(xlen, 0);
}

#[tokio::test]
async fn a_rotated_token_stops_working_within_the_cache_ttl() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_old"), "5:active").unwrap();
    let (addr, _) = serve(config(&redis, &[("VT_TOKEN_CACHE_SECONDS", "1")])).await;

    assert_eq!(post_ingest(addr, "vtd_old", r#"{"a":1}"#).await.status, 202);
    // The new token is looked up (and cached as unknown) before it is issued.
    assert_eq!(post_ingest(addr, "vtd_new", r#"{"a":1}"#).await.status, 401);

    // Rotation as the registry does it: publish the new hash, drop the old one.
    let _: () = conn.hset("vt:device-tokens", field("vtd_new"), "5:active").unwrap();
    let _: () = conn.hdel("vt:device-tokens", field("vtd_old")).unwrap();
    let rotated = Instant::now();

    let old_dead = eventually(Duration::from_secs(3), async || {
        (post_ingest(addr, "vtd_old", r#"{"a":1}"#).await.status == 401).then(Instant::now)
    })
    .await
    .expect("the old token keeps working");
    let new_alive = eventually(Duration::from_secs(3), async || {
        (post_ingest(addr, "vtd_new", r#"{"a":1}"#).await.status == 202).then(Instant::now)
    })
    .await
    .expect("the new token never works");
    // TTL 1 s plus room for a slow, shared test machine; the contract's bound is 5 s.
    let ttl = Duration::from_millis(2500);
    assert!(old_dead - rotated <= ttl, "old token lived {:?}", old_dead - rotated);
    assert!(new_alive - rotated <= ttl, "new token waited {:?}", new_alive - rotated);

    // Disabling takes effect the same way.
    let _: () = conn.hset("vt:device-tokens", field("vtd_new"), "5:disabled").unwrap();
    let forbidden = eventually(Duration::from_secs(3), async || {
        (post_ingest(addr, "vtd_new", r#"{"a":1}"#).await.status == 403).then_some(())
    })
    .await;
    assert!(forbidden.is_some(), "disabling did not take effect");
}

#[tokio::test]
async fn redis_going_away_gives_503_with_retry_after_and_never_202() {
    if !common::redis_available() {
        return;
    }
    let mut redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_r"), "1:active").unwrap();
    let (addr, _) = serve(config(&redis, &[])).await;
    assert_eq!(post_ingest(addr, "vtd_r", r#"{"a":1}"#).await.status, 202);
    assert_eq!(request(addr, "GET", "/readyz", &[], "").await.status, 200);

    redis.kill();
    for _ in 0..20 {
        let reply = post_ingest(addr, "vtd_r", r#"{"a":2}"#).await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.header("retry-after"), Some("2"));
        assert_eq!(reply.json()["error"], "unavailable");
    }
    let ready = request(addr, "GET", "/readyz", &[], "").await;
    assert_eq!((ready.status, ready.json()["error"].as_str()), (503, Some("unavailable")));

    // The connection comes back by itself once Redis does (data was lost with it: no persistence here).
    redis.restart();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_r"), "1:active").unwrap();
    let back = eventually(Duration::from_secs(10), async || {
        (post_ingest(addr, "vtd_r", r#"{"a":3}"#).await.status == 202).then_some(())
    })
    .await;
    assert!(back.is_some(), "never recovered after Redis came back");
    let stored = entries(&mut conn, "vt:telemetry");
    assert!(stored.iter().all(|e| get(e, "r").contains(",3]")), "only the post-restart write is there: {stored:?}");
}

#[tokio::test]
async fn a_backlog_over_the_high_water_mark_gives_503_until_it_drains() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_b"), "1:active").unwrap();
    let (addr, _) = serve(config(&redis, &[("VT_STREAM_HIGH_WATER", "3")])).await;

    for _ in 0..4 {
        assert_eq!(post_ingest(addr, "vtd_b", r#"{"a":1}"#).await.status, 202);
    }
    // No consumer group yet: the backlog is XLEN = 4 > 3.
    let refused = eventually(Duration::from_secs(3), async || {
        let r = post_ingest(addr, "vtd_b", r#"{"a":1}"#).await;
        (r.status == 503).then_some(r)
    })
    .await
    .expect("never refused over the high-water mark");
    assert_eq!(refused.header("retry-after"), Some("2"));
    assert_eq!(refused.json()["message"], "stream backlog is over its high-water mark");

    // With the group created at 0, lag counts the same 4 entries.
    let _: () =
        redis::cmd("XGROUP").arg("CREATE").arg("vt:telemetry").arg("aggregators").arg("0").query(&mut conn).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(post_ingest(addr, "vtd_b", r#"{"a":1}"#).await.status, 503);

    // Read but not acked: pending keeps it over the mark; acked: it drains.
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("aggregators")
        .arg("c1")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg("vt:telemetry")
        .arg(">")
        .query(&mut conn)
        .unwrap();
    assert_ne!(read, redis::Value::Nil);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(post_ingest(addr, "vtd_b", r#"{"a":1}"#).await.status, 503, "pending entries are backlog");
    let ids: Vec<String> = entries(&mut conn, "vt:telemetry").into_iter().map(|e| e.0).collect();
    let _: () = redis::cmd("XACK").arg("vt:telemetry").arg("aggregators").arg(&ids).query(&mut conn).unwrap();
    let accepted = eventually(Duration::from_secs(3), async || {
        (post_ingest(addr, "vtd_b", r#"{"a":1}"#).await.status == 202).then_some(())
    })
    .await;
    assert!(accepted.is_some(), "still refused after the backlog drained");
}

#[tokio::test]
async fn shards_are_chosen_by_device_id_modulo_n() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    for id in [3, 4, 5, 7] {
        let _: () = conn.hset("vt:device-tokens", field(&format!("vtd_{id}")), format!("{id}:active")).unwrap();
    }
    let (addr, _) = serve(config(&redis, &[("VT_STREAM_SHARDS", "3")])).await;
    for id in [3, 4, 5, 7] {
        assert_eq!(post_ingest(addr, &format!("vtd_{id}"), r#"{"a":1}"#).await.status, 202);
    }
    let devices = |key: &str, conn: &mut redis::Connection| -> Vec<String> {
        entries(conn, key).iter().map(|e| get(e, "d").to_owned()).collect()
    };
    assert_eq!(devices("vt:telemetry:{0}", &mut conn), ["3"]);
    assert_eq!(devices("vt:telemetry:{1}", &mut conn), ["4", "7"]);
    assert_eq!(devices("vt:telemetry:{2}", &mut conn), ["5"]);
    let plain: usize = conn.xlen("vt:telemetry").unwrap();
    assert_eq!(plain, 0, "with shards the plain key is unused");
}
