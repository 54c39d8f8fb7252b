//! Helpers of the integration tests: a real `redis-server` on a free port, the
//! service on another, and a tiny HTTP/1.1 client (one request per connection).

#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::ServiceExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use visiontrack_ingestor::{metrics, router, stream, AppState, Config};

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether redis-server is installed. `false` tells the caller to return: the test is skipped, saying so. Under
/// `CI=true` its absence fails the test instead, so that CI never counts a test it did not run as passed.
pub fn redis_available() -> bool {
    if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "redis-server is needed for this test; CI=true makes its absence a failure"
    );
    // Straight to stderr, in one write: the test harness hides the `eprintln!` of a test that passes.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    let line = format!("SKIPPED {test}: redis-server is not installed (apt-get install redis-server)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// A throwaway redis-server, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server given more arguments, e.g. `--replicaof 127.0.0.1 <port>`.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server =
            Self { port: free_port(), child: None, extra: extra.iter().map(|a| (*a).to_owned()).collect() };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Hex SHA-256 of a token: the field of the token index.
pub fn field(token: &str) -> String {
    visiontrack_ingestor::auth::index_field(&visiontrack_ingestor::auth::token_digest(token))
}

pub fn config(redis: &RedisServer, extra: &[(&str, &str)]) -> Config {
    let url = redis.url();
    let mut vars: Vec<(String, String)> = vec![
        ("REDIS_URL".into(), url),
        ("VT_REDIS_TIMEOUT_MS".into(), "500".into()),
        ("VT_BACKLOG_CHECK_MS".into(), "20".into()),
        ("VT_RETRY_AFTER_SECONDS".into(), "2".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Config::from_lookup(move |n| vars.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap()
}

/// Serves the router on a free port inside the test's runtime.
pub async fn serve(config: Config) -> (SocketAddr, AppState) {
    let state = AppState::new(config, metrics::install()).unwrap();
    tokio::spawn(stream::sample_backlog_forever(state.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await.unwrap() });
    (addr, state)
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub async fn post_ingest(addr: SocketAddr, token: &str, body: &str) -> Reply {
    request(
        addr,
        "POST",
        "/api/ingest",
        &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
        body,
    )
    .await
}

pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    read_reply(&mut s).await
}

pub async fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.expect("reply in time").unwrap();
    parse_reply(&raw)
}

pub fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    Reply { status, headers, body: body.to_owned() }
}

pub fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub async fn eventually<T>(within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
