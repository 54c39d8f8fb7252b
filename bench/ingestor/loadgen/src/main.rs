//! Fixed-rate HTTP/1.1 load over keep-alive connections, for latency at a given
//! request rate (wrk has no rate option; wrk2 is not packaged here).
//!
//! Each connection sends on its own schedule (rate / connections). Latency is
//! measured from the scheduled send time when the connection was still busy
//! with an earlier request (so a stall is not hidden: no coordinated omission),
//! else from the actual send.
//!
//! Usage: vt-loadgen --addr 127.0.0.1:8080 --path /api/ingest --rate 15000
//!        --duration 20 --connections 32 --threads 1 --header 'K: V' --body '{...}'
//!        [--seq-start N] [--tokens a,b,c]
//!
//! With `--tokens`, connection i sends `Authorization: Bearer <token i mod n>`: several devices' load
//! from one process, measured as one (the percentiles are over all of their requests).
//!
//! Every `{seq}` in the body becomes a number unique to the request (counting up from --seq-start,
//! zero-padded to six digits), so bodies can carry distinct timestamps and the pipeline stores every reading.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    addr: String,
    path: String,
    rate: f64,
    duration: f64,
    connections: usize,
    threads: usize,
    headers: Vec<String>,
    body: String,
    seq_start: u64,
    tokens: Vec<String>,
}

/// The request template: the head up to the headers, and the body split at its `{seq}` markers.
struct Template {
    head: String,
    body_parts: Vec<String>,
    seq: AtomicU64,
}

impl Template {
    fn render(&self) -> Vec<u8> {
        let body = if self.body_parts.len() == 1 {
            self.body_parts[0].clone()
        } else {
            let n = format!("{:06}", self.seq.fetch_add(1, Ordering::Relaxed));
            self.body_parts.join(&n)
        };
        format!("{}Content-Length: {}\r\n\r\n{}", self.head, body.len(), body).into_bytes()
    }
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".into(),
        path: "/api/ingest".into(),
        rate: 1000.0,
        duration: 10.0,
        connections: 32,
        threads: 1,
        headers: Vec::new(),
        body: String::new(),
        seq_start: 0,
        tokens: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value,
            "--path" => a.path = value,
            "--rate" => a.rate = value.parse().expect("--rate"),
            "--duration" => a.duration = value.parse().expect("--duration"),
            "--connections" => a.connections = value.parse().expect("--connections"),
            "--threads" => a.threads = value.parse().expect("--threads"),
            "--header" => a.headers.push(value),
            "--body" => a.body = value,
            "--seq-start" => a.seq_start = value.parse().expect("--seq-start"),
            "--tokens" => a.tokens = value.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

#[derive(Default)]
struct Outcome {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    errors: u64,
}

async fn connection(addr: String, template: Arc<Template>, interval: Duration, start: Instant, end: Instant) -> Outcome {
    let mut out = Outcome::default();
    let Ok(stream) = TcpStream::connect(&addr).await else {
        out.errors += 1;
        return out;
    };
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    let mut due = start;
    let mut free_since = start;
    let mut line = String::new();
    while due < end {
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        // Late because the previous answer was late: count from the schedule.
        let origin = if free_since > due { due } else { sent };
        if stream.get_mut().write_all(&template.render()).await.is_err() {
            out.errors += 1;
            break;
        }
        let mut status = 0u16;
        let mut length = 0usize;
        line.clear();
        let mut first = true;
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => {
                    out.errors += 1;
                    return out;
                }
                Ok(_) => {}
            }
            let l = line.trim_end();
            if first {
                status = l.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                first = false;
            } else if l.is_empty() {
                break;
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).await.is_err() {
            out.errors += 1;
            break;
        }
        let done = Instant::now();
        free_since = done;
        if !(200..300).contains(&status) {
            out.non_2xx += 1;
        }
        out.latencies_us.push(u32::try_from(done.duration_since(origin).as_micros()).unwrap_or(u32::MAX));
        due += interval;
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

fn main() {
    let args = parse_args();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build().expect("runtime");
    let mut head = format!("POST {} HTTP/1.1\r\nHost: {}\r\n", args.path, args.addr);
    for h in &args.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    let heads: Vec<String> = if args.tokens.is_empty() {
        vec![head]
    } else {
        args.tokens.iter().map(|t| format!("{head}Authorization: Bearer {t}\r\n")).collect()
    };
    let templates: Vec<Arc<Template>> = heads
        .into_iter()
        .map(|head| {
            Arc::new(Template {
                head,
                body_parts: args.body.split("{seq}").map(str::to_owned).collect(),
                seq: AtomicU64::new(args.seq_start),
            })
        })
        .collect();

    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let outcomes = runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(100);
        let end = start + Duration::from_secs_f64(args.duration);
        let mut tasks = Vec::new();
        for i in 0..args.connections {
            // Spread the connections' schedules over one interval.
            let offset = interval.mul_f64(i as f64 / args.connections as f64);
            let template = templates[i % templates.len()].clone();
            tasks.push(tokio::spawn(connection(args.addr.clone(), template, interval, start + offset, end)));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("task"));
        }
        all
    });
    let mut lat: Vec<u32> = outcomes.iter().flat_map(|o| o.latencies_us.iter().copied()).collect();
    lat.sort_unstable();
    let non_2xx: u64 = outcomes.iter().map(|o| o.non_2xx).sum();
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    println!(
        "requests={} rate={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} non_2xx={} errors={}",
        lat.len(),
        lat.len() as f64 / args.duration,
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        percentile(&lat, 99.9),
        percentile(&lat, 100.0),
        non_2xx,
        errors
    );
}
