//! Thread-per-core serving. Each of the `VT_WORKER_THREADS` servers runs on its
//! own OS thread with a current-thread tokio runtime, a listening socket of its
//! own on the shared address (SO_REUSEPORT: the kernel hands each new connection
//! to one of them) and an `AppState` of its own (Redis connection, token cache).
//! A request, the Redis connection's driver task and the reply then never wake
//! another thread: on the multi-thread runtime those wake-ups (futexes, IPIs) were
//! about a quarter of the CPU spent per request. Shared between the servers: the
//! config, the metrics recorder, and the stream backlogs (atomics), which the
//! first server alone samples.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::thread::JoinHandle;

use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Builder, Runtime};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::{router, stream, AppState, Config};

/// Pending connections per listener, as tokio's own `TcpListener::bind`.
const BACKLOG: u32 = 1024;

/// A server made ready on the main thread, so that any failure stops the start
/// before the first request is served.
struct Server {
    runtime: Runtime,
    listener: TcpListener,
    state: AppState,
}

/// Serves until the first SIGTERM or SIGINT, then lets every server finish its
/// requests in flight. Exit code 2 when the Redis client cannot be set up (a
/// configuration error), 1 when the address cannot be bound or a server stops
/// on its own (the others are then stopped too).
pub fn run(config: &Config, metrics: &PrometheusHandle) -> ExitCode {
    let control = match Builder::new_current_thread().enable_io().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the signal runtime");
            return ExitCode::from(1);
        }
    };
    // Before anything is served: from here on SIGTERM drains instead of killing,
    // and a signal that arrives during the start is kept for the wait below.
    let installed = {
        let _in = control.enter();
        Signals::install()
    };
    let mut signals = match installed {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM/SIGINT");
            return ExitCode::from(1);
        }
    };
    let servers = match prepare(config, metrics) {
        Ok(servers) => servers,
        Err(code) => return code,
    };
    let addr = servers[0].listener.local_addr().unwrap_or(config.listen_addr);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (stopped_tx, mut stopped_rx) = mpsc::unbounded_channel();
    let mut threads = Vec::with_capacity(servers.len());
    let mut failed = false;
    for (index, server) in servers.into_iter().enumerate() {
        match spawn(index, server, stop_rx.clone(), stopped_tx.clone()) {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a server thread");
                failed = true;
                break;
            }
        }
    }
    if !failed {
        tracing::info!(
            %addr,
            threads = threads.len(),
            stream = %config.stream_key,
            shards = config.stream_shards,
            "visiontrack-ingestor listening"
        );
        failed = control.block_on(async {
            tokio::select! {
                () = signals.recv() => {
                    tracing::info!("shutdown signal received; draining");
                    false
                }
                Some(index) = stopped_rx.recv() => {
                    tracing::error!(server = index, "a server stopped unasked; stopping the others");
                    true
                }
            }
        });
    }

    let _ = stop_tx.send(true);
    if !join(threads) || failed {
        return ExitCode::from(1);
    }
    tracing::info!("stopped after finishing in-flight requests");
    ExitCode::SUCCESS
}

/// Waits for every server thread; false if any failed.
fn join(threads: Vec<JoinHandle<io::Result<()>>>) -> bool {
    let mut all_ok = true;
    for (index, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(server = index, error = %e, "server failed");
                all_ok = false;
            }
            Err(_) => {
                tracing::error!(server = index, "server thread panicked");
                all_ok = false;
            }
        }
    }
    all_ok
}

/// A runtime, a state and a listener per server.
fn prepare(config: &Config, metrics: &PrometheusHandle) -> Result<Vec<Server>, ExitCode> {
    let runtimes = (0..config.worker_threads)
        .map(|_| Builder::new_current_thread().enable_all().build())
        .collect::<io::Result<Vec<Runtime>>>()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot build a server runtime");
            ExitCode::from(1)
        })?;
    let mut states: Vec<AppState> = Vec::with_capacity(runtimes.len());
    for runtime in &runtimes {
        // The Redis client spawns its tasks on the runtime it is created in.
        let _in = runtime.enter();
        let state = match states.first() {
            None => AppState::new(config.clone(), metrics.clone()),
            Some(first) => first.sharing_backlog(),
        };
        states.push(state.map_err(|e| {
            tracing::error!(error = %e, "cannot set up the Redis client");
            ExitCode::from(2)
        })?);
    }
    let listeners = bind(config.listen_addr, &runtimes).map_err(|e| {
        tracing::error!(addr = %config.listen_addr, error = %e, "cannot listen");
        ExitCode::from(1)
    })?;
    Ok(runtimes
        .into_iter()
        .zip(states)
        .zip(listeners)
        .map(|((runtime, state), listener)| Server { runtime, listener, state })
        .collect())
}

/// One listener per runtime, all on one port.
fn bind(addr: SocketAddr, runtimes: &[Runtime]) -> io::Result<Vec<TcpListener>> {
    // A plain bind first. SO_REUSEPORT alone would let this process join a port
    // another process of the same user already listens on, and take part of its
    // connections; this fails on a taken port as a single listener would. It also
    // fixes the port when the address asks for any (port 0): all must share one.
    let addr = {
        let probe = socket(addr)?;
        probe.bind(addr)?;
        probe.local_addr()?
    };
    runtimes
        .iter()
        .map(|runtime| {
            let socket = socket(addr)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            // The listener registers with the reactor of the runtime entered here.
            let _in = runtime.enter();
            socket.listen(BACKLOG)
        })
        .collect()
}

fn socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As tokio's own bind: a restart need not wait for the old connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

fn spawn(
    index: usize,
    server: Server,
    stop: watch::Receiver<bool>,
    stopped: mpsc::UnboundedSender<usize>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    std::thread::Builder::new().name(format!("ingestor-{index}")).spawn(move || {
        let _report = Stopped { to: stopped, index };
        let Server { runtime, listener, state } = server;
        runtime.block_on(serve(listener, state, index == 0, stop))
    })
}

/// One server (the first also sampling the backlogs for all), until `stop` turns true.
async fn serve(
    listener: TcpListener,
    state: AppState,
    samples_backlog: bool,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    if samples_backlog {
        tokio::spawn(stream::sample_backlog_forever(state.clone()));
    }
    let listener = listener.tap_io(|tcp| {
        // Small JSON answers: send them now, not after Nagle's delay.
        let _ = tcp.set_nodelay(true);
    });
    // Also stops when the sender is gone: nobody could ask any more.
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    axum::serve(listener, router(state)).with_graceful_shutdown(stopped).await
}

/// Tells the main thread that a server thread ended, however it ended (a panic
/// in a test build included), so the others are stopped rather than left serving.
struct Stopped {
    to: mpsc::UnboundedSender<usize>,
    index: usize,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.to.send(self.index);
    }
}

/// SIGTERM and SIGINT, handled from the moment they are installed.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Needs a runtime context.
    fn install() -> io::Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
