//! `vt-mqtt-loadgen --addr 127.0.0.1:1883 --user TOKEN --connections 100 --inflight 64 --duration 15`
//! publishes QoS 1 on every connection, each keeping up to `--inflight` PUBLISHes unacknowledged, and
//! prints `acked=N rate=R/s connections=C failed=F p50_ms=A p99_ms=B`.
//!
//! - `--rate R`: R messages/s in all, spread evenly over the connections (0, the default: as fast as the
//!   broker acknowledges). A message's latency runs from when it was due, not from when it went out, so a
//!   broker that falls behind is not flattered by the load easing off.
//! - `--readings N`: readings per message (`{"m0":0.5,"m1":1.5,...}`), 1 by default.
//! - `--protocol 4|5`: MQTT 3.1.1 (default) or 5.
//! - `--idle N` instead opens N connections that only keep alive, prints `ready N`, and holds them for
//!   `--duration` seconds (the bench reads the server's RSS meanwhile).
//!
//! The packets are written by hand (CONNECT, PUBLISH, and reading CONNACK and PUBACK are all a load test
//! needs) on one thread, so that the generator spends little of the CPU it shares with the broker and
//! costs every broker the same.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

struct Args {
    addr: String,
    user: String,
    connections: usize,
    inflight: usize,
    duration: Duration,
    idle: usize,
    topic: String,
    rate: f64,
    readings: usize,
    protocol: u8,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:1883".into(),
        user: "bench".into(),
        connections: 64,
        inflight: 64,
        duration: Duration::from_secs(15),
        idle: 0,
        topic: "v1/devices/me/telemetry".into(),
        rate: 0.0,
        readings: 1,
        protocol: 4,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--addr" => a.addr = value,
            "--user" => a.user = value,
            "--connections" => a.connections = value.parse().expect("--connections N"),
            "--inflight" => a.inflight = value.parse::<usize>().expect("--inflight N").clamp(1, 32_767),
            "--duration" => a.duration = Duration::from_secs_f64(value.parse().expect("--duration s")),
            "--idle" => a.idle = value.parse().expect("--idle N"),
            "--topic" => a.topic = value,
            "--rate" => a.rate = value.parse().expect("--rate messages/s"),
            "--readings" => a.readings = value.parse::<usize>().expect("--readings N").max(1),
            "--protocol" => a.protocol = value.parse().ok().filter(|v| *v == 4 || *v == 5).expect("--protocol 4|5"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        if a.idle > 0 {
            idle(&a).await;
        } else {
            load(&a).await;
        }
    });
}

/// The remaining-length field of a packet (MQTT's variable byte integer).
fn put_length(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = u8::try_from(n % 128).unwrap_or(0);
        n /= 128;
        buf.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            return;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&u16::try_from(s.len()).expect("a short string").to_be_bytes());
    buf.extend_from_slice(s);
}

fn connect_packet(a: &Args, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(a.protocol);
    body.push(0x80 | 0x02); // user name, clean session
    body.extend_from_slice(&60u16.to_be_bytes()); // keep-alive
    if a.protocol == 5 {
        body.push(0); // no properties
    }
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, a.user.as_bytes());
    let mut packet = vec![0x10];
    put_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// A QoS 1 PUBLISH, as a template whose packet id (at `id_at`) is set per message.
struct Publish {
    packet: Vec<u8>,
    id_at: usize,
}

impl Publish {
    fn new(a: &Args) -> Self {
        let fields: Vec<String> = (0..a.readings).map(|k| format!("\"m{k}\":{k}.5")).collect();
        let payload = format!("{{{}}}", fields.join(","));
        let properties = usize::from(a.protocol == 5);
        let length = 2 + a.topic.len() + 2 + properties + payload.len();
        let mut packet = vec![0x32];
        put_length(&mut packet, length);
        put_str(&mut packet, a.topic.as_bytes());
        let id_at = packet.len();
        packet.extend_from_slice(&[0, 0]);
        if properties == 1 {
            packet.push(0);
        }
        packet.extend_from_slice(payload.as_bytes());
        Self { packet, id_at }
    }

    fn write(&self, id: u16, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.packet);
        out[start + self.id_at..start + self.id_at + 2].copy_from_slice(&id.to_be_bytes());
    }
}

/// One packet read from `buf`: (first byte, body), and the bytes it took; None when incomplete.
fn next_packet(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (mut length, mut shift, mut at) = (0usize, 0u32, 1usize);
    loop {
        let byte = *buf.get(at)?;
        length |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    let end = at + length;
    (buf.len() >= end).then(|| (buf[0], &buf[at..end], end))
}

async fn connected(a: &Args, n: usize) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(&a.addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&connect_packet(a, &format!("bench-{}-{n}", std::process::id()))).await?;
    let mut buf = Vec::with_capacity(64);
    loop {
        if let Some((first, body, _)) = next_packet(&buf) {
            // Both versions: [flags, return/reason code, ...].
            return match (first >> 4, body.get(1)) {
                (2, Some(0)) => Ok(stream),
                _ => Err(io::Error::other(format!("CONNACK refused: {body:?}"))),
            };
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("closed before CONNACK"));
        }
    }
}

/// `count` connections, one after another; those refused are reported and left out.
async fn connect_all(a: &Args, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for n in 0..count {
        match connected(a, n).await {
            Ok(s) => streams.push(s),
            Err(e) => eprintln!("connection {n}: {e}"),
        }
    }
    streams
}

/// What one connection did: acknowledged messages, whether it failed, and each message's latency (µs).
struct Outcome {
    acked: u64,
    failed: bool,
    latencies: Vec<u32>,
}

async fn load(a: &Args) {
    let streams = connect_all(a, a.connections).await;
    let start = Instant::now() + Duration::from_millis(100);
    let deadline = start + a.duration;
    let publish = Arc::new(Publish::new(a));
    let per_connection = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.connections as f64 / a.rate));
    let mut tasks = JoinSet::new();
    for (n, stream) in streams.into_iter().enumerate() {
        // Paced connections start spread over one interval, not all on the same tick.
        let offset = per_connection.map_or(Duration::ZERO, |p| p.mul_f64(n as f64 / a.connections as f64));
        let pace = Pace { first: start + offset, interval: per_connection, deadline };
        tasks.spawn(publish_until(stream, publish.clone(), a.inflight, a.protocol, pace));
    }
    let outcomes = tasks.join_all().await;
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let failed = outcomes.iter().filter(|o| o.failed).count() + a.connections - outcomes.len();
    let mut latencies: Vec<u32> = outcomes.into_iter().flat_map(|o| o.latencies).collect();
    latencies.sort_unstable();
    let quantile = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(latencies[i]) / 1000.0
    };
    let rate = acked as f64 / a.duration.as_secs_f64();
    println!(
        "acked={acked} rate={rate:.0}/s connections={} failed={failed} p50_ms={:.2} p99_ms={:.2}",
        a.connections,
        quantile(0.5),
        quantile(0.99)
    );
}

/// When a connection publishes: from `first`, one every `interval` (None: as fast as PUBACKs come back),
/// until `deadline`.
struct Pace {
    first: Instant,
    interval: Option<Duration>,
    deadline: Instant,
}

/// Publishes on one connection, at most `window` unacknowledged, and counts what is acknowledged by the
/// deadline. Packet ids cycle over 1..=2*window, so a message's due time is found by its id.
async fn publish_until(stream: TcpStream, publish: Arc<Publish>, window: usize, protocol: u8, pace: Pace) -> Outcome {
    let (mut reader, mut writer) = stream.into_split();
    let ids = u16::try_from(2 * window).unwrap_or(u16::MAX);
    let mut due: Vec<Option<Instant>> = vec![None; usize::from(ids) + 1];
    let mut outcome = Outcome { acked: 0, failed: false, latencies: Vec::new() };
    let (mut next_id, mut inflight, mut next_due) = (1u16, 0usize, pace.first);
    let (mut out, mut input) = (Vec::with_capacity(64 * 1024), Vec::with_capacity(64 * 1024));
    tokio::time::sleep_until(pace.first.into()).await;
    loop {
        let now = Instant::now();
        if now >= pace.deadline {
            break;
        }
        while inflight < window && next_due <= now && due[usize::from(next_id)].is_none() {
            publish.write(next_id, &mut out);
            due[usize::from(next_id)] = Some(if pace.interval.is_some() { next_due } else { now });
            next_id = if next_id == ids { 1 } else { next_id + 1 };
            inflight += 1;
            next_due = pace.interval.map_or(now, |i| next_due + i);
        }
        if !out.is_empty() {
            if writer.write_all(&out).await.is_err() {
                outcome.failed = true;
                break;
            }
            out.clear();
        }
        let wake = if inflight < window { next_due.min(pace.deadline) } else { pace.deadline };
        tokio::select! {
            read = reader.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => { outcome.failed = true; break; }
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(wake.into()) => continue,
        }
        let mut used = 0;
        while let Some((first_byte, body, size)) = next_packet(&input[used..]) {
            used += size;
            if first_byte >> 4 != 4 || body.len() < 2 {
                continue; // not a PUBACK
            }
            let id = u16::from_be_bytes([body[0], body[1]]);
            let refused = protocol == 5 && body.get(2).is_some_and(|code| *code >= 0x80);
            if let Some(sent) = due.get_mut(usize::from(id)).and_then(Option::take) {
                inflight -= 1;
                let at = Instant::now();
                if refused {
                    outcome.failed = true;
                } else if at <= pace.deadline {
                    outcome.acked += 1;
                    outcome.latencies.push(u32::try_from(at.duration_since(sent).as_micros()).unwrap_or(u32::MAX));
                }
            }
        }
        input.drain(..used);
    }
    outcome
}

async fn idle(a: &Args) {
    let held = connect_all(a, a.idle).await;
    println!("ready {}", held.len());
    tokio::time::sleep(a.duration).await;
}
