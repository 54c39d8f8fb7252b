//! Entry point: config, tracing, state, serve until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use visiontrack_ingestor::config::LogFormat;
use visiontrack_ingestor::{metrics, router, stream, AppState, Config};

// glibc malloc was a fifth of the CPU profile under load; mimalloc is much cheaper
// for the many small short-lived allocations of a request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("visiontrack-ingestor: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);

    let handle = metrics::install();
    let state = match AppState::new(config.clone(), handle.clone()) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the Redis client");
            return ExitCode::from(2);
        }
    };
    tokio::spawn(stream::sample_backlog_forever(state.clone()));
    // Upkeep folds the recorded histogram samples into buckets: a few ms of CPU
    // at full rate, kept off the request threads.
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            handle.run_upkeep();
        })
        .expect("spawn the metrics upkeep thread");

    let listener = match TcpListener::bind(config.listen_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.listen_addr, error = %e, "cannot listen");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        addr = %config.listen_addr,
        stream = %config.stream_key,
        shards = config.stream_shards,
        "visiontrack-ingestor listening"
    );
    let listener = listener.tap_io(|tcp| {
        // Small JSON answers: send them now, not after Nagle's delay.
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await;
    match served {
        Ok(()) => {
            tracing::info!("stopped after finishing in-flight requests");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(config: &Config) {
    let level: tracing::Level = config.log_level.parse().unwrap_or(tracing::Level::INFO);
    // Colours only for a person at a terminal, never into log files or collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false).with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on the first SIGTERM or SIGINT; axum then stops accepting and
/// waits for the requests in flight.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received; draining");
}
