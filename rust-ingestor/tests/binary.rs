//! The built binary: bad configuration stops it with the variable's name; JSON
//! logs; SIGTERM lets a request in flight finish before the process exits.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{field, free_port, RedisServer};
use redis::Commands;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_visiontrack-ingestor");

#[test]
fn a_malformed_setting_stops_the_process_naming_the_variable() {
    for (var, value) in [("VT_STREAM_SHARDS", "0"), ("VT_TOKEN_CACHE_SECONDS", "9"), ("VT_LISTEN_ADDR", "nowhere")] {
        let out = Command::new(BIN).env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_t"), "2:active").unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .env("REDIS_URL", redis.url())
        .env("VT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("VT_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The first log line is JSON and says where it listens.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(log["level"], "INFO", "{line}");
    assert!(line.contains(&port.to_string()), "{line}");

    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = r#"{"temperature":20}"#;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/ingest HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer vtd_t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&body.as_bytes()[5..]).await.unwrap();
    let reply = common::read_reply(&mut s).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let xlen: usize = conn.xlen("vt:telemetry").unwrap();
    assert_eq!(xlen, 1);

    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}
