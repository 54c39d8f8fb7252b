//! The built binary: bad configuration stops it with the variable's name; a taken
//! address stops it too; JSON logs; one server thread per `VT_WORKER_THREADS`;
//! SIGTERM lets a request in flight finish before the process exits.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{field, free_port, RedisServer};
use redis::Commands;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_visiontrack-ingestor");

#[test]
fn a_malformed_setting_stops_the_process_naming_the_variable() {
    for (var, value) in [
        ("VT_STREAM_SHARDS", "0"),
        ("VT_TOKEN_CACHE_SECONDS", "9"),
        ("VT_LISTEN_ADDR", "nowhere"),
        ("VT_WORKER_THREADS", "0"),
    ] {
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
    let mut ingestor = Started::new(
        Command::new(BIN)
            .env("REDIS_URL", redis.url())
            .env("VT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("VT_LOG_FORMAT", "json"),
    );

    // The first log line is JSON and says where it listens.
    let log = ingestor.first_log_line();
    assert_eq!(log["level"], "INFO", "{log}");
    assert!(log.to_string().contains(&port.to_string()), "{log}");

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

    ingestor.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&body.as_bytes()[5..]).await.unwrap();
    let reply = common::read_reply(&mut s).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let xlen: usize = conn.xlen("vt:telemetry").unwrap();
    assert_eq!(xlen, 1);

    let status = ingestor.exit_within(Duration::from_secs(5));
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

/// The binary, killed if the test fails before it exits.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Started {
    fn new(command: &mut Command) -> Self {
        Self(command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap())
    }

    /// The first line of the log (stdout), as JSON.
    fn first_log_line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        BufReader::new(self.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill").args([&format!("-{name}"), &self.0.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{name}");
    }

    fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn a_taken_address_stops_the_process_with_a_clear_log_line() {
    // A plain listener, and one with SO_REUSEPORT (as another ingestor would hold
    // it): the servers must not quietly share that port.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let shared = tokio::net::TcpSocket::new_v4().unwrap();
    shared.set_reuseport(true).unwrap();
    shared.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let shared = shared.listen(16).unwrap();
    for addr in [plain.local_addr().unwrap(), shared.local_addr().unwrap()] {
        let mut ingestor = Started::new(
            Command::new(BIN)
                .env("REDIS_URL", "redis://127.0.0.1:1/0")
                .env("VT_LISTEN_ADDR", addr.to_string())
                .env("VT_LOG_FORMAT", "json"),
        );
        let status = ingestor.exit_within(Duration::from_secs(5));
        assert_eq!(status.code(), Some(1), "{addr}");
        let log = ingestor.first_log_line();
        assert_eq!(log["level"], "ERROR", "{log}");
        assert_eq!(log["message"], "cannot listen", "{log}");
        assert_eq!(log["addr"], addr.to_string(), "{log}");
    }
}

#[tokio::test]
async fn each_worker_thread_serves_on_the_one_address() {
    if !common::redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.hset("vt:device-tokens", field("vtd_w"), "3:active").unwrap();
    let port = free_port();
    let mut ingestor = Started::new(
        Command::new(BIN)
            .env("REDIS_URL", redis.url())
            .env("VT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("VT_WORKER_THREADS", "3")
            .env("VT_LOG_FORMAT", "json"),
    );
    let log = ingestor.first_log_line();
    assert_eq!(log["threads"], 3, "{log}");

    // A thread names itself once it runs, so the names may show a moment after the log line.
    let task_dir = format!("/proc/{}/task", ingestor.0.id());
    let servers = || {
        std::fs::read_dir(&task_dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|name| name.starts_with("ingestor-"))
            .count()
    };
    let named = common::eventually(Duration::from_secs(5), async || (servers() == 3).then_some(())).await;
    assert!(named.is_some(), "{} server threads, not 3", servers());
    // /proc/net/tcp: "sl local_address(hex ip:port) rem_address st(0A = LISTEN) ...".
    let local = format!("0100007F:{port:04X}");
    let listeners = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(local.as_str()) && l.split_whitespace().nth(3) == Some("0A"))
        .count();
    assert_eq!(listeners, 3, "one listening socket per server");

    // Many connections at once: the kernel spreads them over the three listeners.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let posts: Vec<_> = (0..48)
        .map(|i| {
            tokio::spawn(async move { common::post_ingest(addr, "vtd_w", &format!(r#"{{"temperature":{i}}}"#)).await })
        })
        .collect();
    for post in posts {
        let reply = post.await.unwrap();
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    // Requests that came together may share an entry (format 2): every one is in exactly one.
    let entries: redis::streams::StreamRangeReply = conn.xrange_all("vt:telemetry").unwrap();
    let requests: usize = entries
        .ids
        .iter()
        .map(|e| match e.get::<String>("g") {
            Some(group) => serde_json::from_str::<Vec<serde_json::Value>>(&group).unwrap().len(),
            None => 1,
        })
        .sum();
    assert_eq!(requests, 48, "{} entries", entries.ids.len());

    ingestor.signal("INT");
    assert!(ingestor.exit_within(Duration::from_secs(5)).success());
}
