//! `vt-mqtt-loadgen --addr 127.0.0.1:1883 --user TOKEN --connections 64 --inflight 64 --duration 15`
//! publishes QoS 1 on every connection as fast as the broker acknowledges, each connection keeping up to
//! `--inflight` PUBLISHes unacknowledged, and prints `acked=N rate=R/s connections=C failed=F`.
//! `--idle N` instead opens N connections that only keep alive, prints `ready N`, and holds them for
//! `--duration` seconds (the bench reads the server's RSS meanwhile).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

struct Args {
    host: String,
    port: u16,
    user: String,
    connections: usize,
    inflight: u16,
    duration: Duration,
    idle: usize,
    topic: String,
}

fn args() -> Args {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 1883,
        user: "bench".into(),
        connections: 64,
        inflight: 64,
        duration: Duration::from_secs(15),
        idle: 0,
        topic: "v1/devices/me/telemetry".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--addr" => {
                let (h, p) = value.rsplit_once(':').expect("--addr host:port");
                a.host = h.into();
                a.port = p.parse().expect("port");
            }
            "--user" => a.user = value,
            "--connections" => a.connections = value.parse().expect("--connections N"),
            "--inflight" => a.inflight = value.parse().expect("--inflight N"),
            "--duration" => a.duration = Duration::from_secs_f64(value.parse().expect("--duration s")),
            "--idle" => a.idle = value.parse().expect("--idle N"),
            "--topic" => a.topic = value,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn options(a: &Args, n: usize) -> MqttOptions {
    let mut o = MqttOptions::new(format!("bench-{}-{n}", std::process::id()), a.host.clone(), a.port);
    o.set_credentials(a.user.clone(), "");
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(a.inflight);
    o.set_clean_session(true);
    o
}

#[tokio::main]
async fn main() {
    let a = Arc::new(args());
    if a.idle > 0 {
        idle(&a).await;
    } else {
        load(&a).await;
    }
}

async fn load(a: &Arc<Args>) {
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + a.duration;
    let mut tasks = Vec::new();
    for n in 0..a.connections {
        let (client, mut events) = AsyncClient::new(options(a, n), usize::from(a.inflight) * 2);
        let (acked, failed, a2) = (acked.clone(), failed.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let publisher = tokio::spawn(async move {
                let payload = br#"{"temperature":21.5}"#.to_vec();
                while Instant::now() < deadline {
                    if client.publish(a2.topic.clone(), QoS::AtLeastOnce, false, payload.clone()).await.is_err() {
                        break;
                    }
                }
                let _ = client.disconnect().await;
            });
            while Instant::now() < deadline + Duration::from_millis(500) {
                match tokio::time::timeout(Duration::from_millis(500), events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                        if Instant::now() < deadline {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            publisher.abort();
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = acked.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / a.duration.as_secs_f64();
    println!("acked={n} rate={rate:.0}/s connections={} failed={}", a.connections, failed.load(Ordering::Relaxed));
}

async fn idle(a: &Arc<Args>) {
    let connected = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for n in 0..a.idle {
        let (client, mut events) = AsyncClient::new(options(a, n), 4);
        let connected = connected.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        clients.push(client);
        if n % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let wait = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < a.idle as u64 && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ready {}", connected.load(Ordering::Relaxed));
    tokio::time::sleep(a.duration).await;
}
