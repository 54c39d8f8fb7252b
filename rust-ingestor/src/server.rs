//! Thread-per-core serving: `VT_WORKER_THREADS` servers, each on its own OS
//! thread with a current-thread tokio runtime, its own SO_REUSEPORT listener and
//! its own `AppState`; the first also samples the stream backlogs for all. Why:
//! see docs/design.md, "The ingestor: one server per core".

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::serve::ListenerExt;
use axum::ServiceExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Builder, Runtime};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::{mqtt, router, stream, AppState, Config};

/// Pending connections per listener, as tokio's own `TcpListener::bind`.
const BACKLOG: u32 = 1024;

/// A server made ready on the main thread, so that any failure stops the start
/// before the first request is served.
struct Server {
    runtime: Runtime,
    listener: TcpListener,
    /// The MQTT listeners: `VT_MQTT_ADDR`'s and `VT_MQTT_TLS_ADDR`'s, those set.
    mqtt: Vec<mqtt::Listener>,
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
    let mqtt_addrs: Vec<String> = servers[0]
        .mqtt
        .iter()
        .filter_map(|l| l.tcp.local_addr().ok().map(|a| format!("{a}{}", if l.tls.is_some() { " (TLS)" } else { "" })))
        .collect();
    let count = servers.len();
    let slots = mqtt::Slots::new(config.mqtt.max_connections);

    let bodies = servers.into_iter().enumerate().map(|(index, server)| {
        let slots = slots.clone();
        move |stop: watch::Receiver<bool>| {
            let Server { runtime, listener, mqtt, state } = server;
            runtime.block_on(serve(listener, (mqtt, slots), state, index == 0, stop))
        }
    });
    let threads = match Threads::start(bodies) {
        Ok(threads) => threads,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a server thread");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        %addr,
        mqtt = %if mqtt_addrs.is_empty() { "off".to_owned() } else { mqtt_addrs.join(", ") },
        threads = count,
        stream = %config.stream_key,
        shards = config.stream_shards,
        "visiontrack-ingestor listening"
    );
    let shutdown = async {
        signals.recv().await;
        tracing::info!("shutdown signal received; draining");
    };
    threads.supervise(&control, shutdown)
}

/// The server threads: told to stop through `stop`, each reporting on `stopped`
/// when it ends.
struct Threads {
    handles: Vec<JoinHandle<io::Result<()>>>,
    stop: watch::Sender<bool>,
    stopped: mpsc::UnboundedReceiver<usize>,
}

impl Threads {
    /// One thread per body (a server's serve loop, until its receiver turns
    /// true). If one cannot be started, those already running are stopped.
    fn start<B>(bodies: impl IntoIterator<Item = B>) -> io::Result<Self>
    where
        B: FnOnce(watch::Receiver<bool>) -> io::Result<()> + Send + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let (stopped_tx, stopped) = mpsc::unbounded_channel();
        let mut handles = Vec::new();
        for (index, body) in bodies.into_iter().enumerate() {
            let (stop_rx, stopped_tx) = (stop_rx.clone(), stopped_tx.clone());
            let spawned = std::thread::Builder::new().name(format!("ingestor-{index}")).spawn(move || {
                let _report = Stopped { to: stopped_tx, index };
                body(stop_rx)
            });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    let _ = stop.send(true);
                    join(handles);
                    return Err(e);
                }
            }
        }
        Ok(Self { handles, stop, stopped })
    }

    /// Runs `control` until `shutdown` completes or a thread ends unasked,
    /// whichever comes first, then stops every thread and waits for them. The
    /// process's exit code: success only after `shutdown` with every thread
    /// ending cleanly, else 1. Decided here, where the unit tests can reach it:
    /// no outside event makes a server thread end (axum's serve loop retries
    /// failed accepts, tokio catches panics in tasks), only a bug can.
    fn supervise(mut self, control: &Runtime, shutdown: impl Future<Output = ()>) -> ExitCode {
        let unasked = control.block_on(async {
            tokio::select! {
                () = shutdown => false,
                Some(index) = self.stopped.recv() => {
                    tracing::error!(server = index, "a server stopped unasked; stopping the others");
                    true
                }
            }
        });
        let _ = self.stop.send(true);
        let all_clean = join(self.handles);
        if unasked || !all_clean {
            return ExitCode::from(1);
        }
        tracing::info!("stopped after finishing in-flight requests");
        ExitCode::SUCCESS
    }
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
    let mut mqtt = mqtt_listeners(config, &runtimes)?;
    Ok(runtimes
        .into_iter()
        .zip(states)
        .zip(listeners)
        .zip(mqtt.drain(..))
        .map(|(((runtime, state), listener), mqtt)| Server { runtime, listener, mqtt, state })
        .collect())
}

/// Each runtime's MQTT listeners (none when MQTT is off). A TLS certificate
/// that cannot be used stops the start with exit code 2, as a bad setting does.
fn mqtt_listeners(config: &Config, runtimes: &[Runtime]) -> Result<Vec<Vec<mqtt::Listener>>, ExitCode> {
    let mut per_runtime: Vec<Vec<mqtt::Listener>> = runtimes.iter().map(|_| Vec::new()).collect();
    let tls = match &config.mqtt.tls {
        None => None,
        Some(tls) => Some((
            tls.addr,
            mqtt::tls::acceptor(tls).map_err(|error| {
                tracing::error!(%error, "cannot use the MQTT TLS certificate");
                ExitCode::from(2)
            })?,
        )),
    };
    let wanted = [config.mqtt.addr.map(|addr| (addr, None)), tls.map(|(addr, acceptor)| (addr, Some(acceptor)))];
    for (addr, acceptor) in wanted.into_iter().flatten() {
        let bound = bind(addr, runtimes).map_err(|e| {
            tracing::error!(%addr, error = %e, "cannot listen for MQTT");
            ExitCode::from(1)
        })?;
        for (listeners, tcp) in per_runtime.iter_mut().zip(bound) {
            listeners.push(mqtt::Listener { tcp, tls: acceptor.clone() });
        }
    }
    Ok(per_runtime)
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

/// One server (the first also sampling the backlogs for all), HTTP and MQTT,
/// until `stop` turns true; both then finish what they have in flight.
async fn serve(
    listener: TcpListener,
    (mqtt, slots): (Vec<mqtt::Listener>, Arc<mqtt::Slots>),
    state: AppState,
    samples_backlog: bool,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mqtt = async {
        if mqtt.is_empty() {
            Ok(())
        } else {
            mqtt::serve(mqtt, state.clone(), slots, stop.clone()).await
        }
    };
    tokio::spawn(crate::device_stats::flush_forever(state.clone()));
    let (http, mqtt) = tokio::join!(serve_http(listener, state.clone(), samples_backlog, stop.clone()), mqtt);
    crate::device_stats::flush(&state).await;
    http.and(mqtt)
}

async fn serve_http(
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
    axum::serve(listener, router(state).into_make_service()).with_graceful_shutdown(stopped).await
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    type Body = Box<dyn FnOnce(watch::Receiver<bool>) -> io::Result<()> + Send>;

    /// A server thread that serves until asked to stop, and counts the asking.
    fn serving(asked: &Arc<AtomicUsize>) -> Body {
        let asked = asked.clone();
        Box::new(move |mut stop| {
            let runtime = Builder::new_current_thread().build()?;
            if runtime.block_on(stop.wait_for(|stop| *stop)).is_ok() {
                asked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    }

    /// A server thread that fails once asked to stop, as one whose draining went wrong.
    fn failing_when_asked() -> Body {
        Box::new(|mut stop| {
            let runtime = Builder::new_current_thread().build()?;
            let _ = runtime.block_on(stop.wait_for(|stop| *stop));
            Err(io::Error::other("drain failed"))
        })
    }

    /// Starts and supervises the bodies, on a thread of its own so that a
    /// supervisor that never returns fails the test instead of hanging it; the
    /// exit code and the log lines.
    fn supervised(bodies: Vec<Body>, shutdown: impl Future<Output = ()> + Send + 'static) -> (ExitCode, String) {
        let log = Log(Arc::default());
        let writer = log.clone();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
            let code = tracing::subscriber::with_default(subscriber, || {
                let control = Builder::new_current_thread().build().unwrap();
                Threads::start(bodies).unwrap().supervise(&control, shutdown)
            });
            let _ = done_tx.send(code);
        });
        let code = done.recv_timeout(Duration::from_secs(10));
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let code = code.unwrap_or_else(|e| panic!("the supervisor has not returned ({e}):\n{text}"));
        (code, text)
    }

    #[derive(Clone)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Log {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Supervises three servers of which the middle one ends unasked, as `ended`
    /// does; checks that the process would exit 1 and that the others were stopped.
    fn stopped_unasked(ended: Body) -> String {
        let asked = Arc::new(AtomicUsize::new(0));
        let (code, log) = supervised(vec![serving(&asked), ended, serving(&asked)], std::future::pending());
        assert_eq!(code, ExitCode::from(1), "a server stopped unasked:\n{log}");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "the other servers are asked to stop:\n{log}");
        assert!(log.contains("ERROR"), "{log}");
        assert!(log.contains("a server stopped unasked; stopping the others server=1"), "{log}");
        log
    }

    #[test]
    fn a_server_loop_that_returns_unasked_stops_every_server_with_a_failure() {
        // Ok from the thread: only the supervisor can tell that it was not asked to stop.
        stopped_unasked(Box::new(|_| Ok(())));
    }

    #[test]
    fn a_server_loop_that_fails_stops_every_server_with_a_failure() {
        let log = stopped_unasked(Box::new(|_| Err(io::Error::other("listener gone"))));
        assert!(log.contains("server failed server=1 error=listener gone"), "{log}");
    }

    #[test]
    fn a_server_thread_that_panics_stops_every_server_with_a_failure() {
        // The release build aborts on a panic; tests unwind, as a debug build would.
        let log = stopped_unasked(Box::new(|_| panic!("bug in the serve loop")));
        assert!(log.contains("server thread panicked server=1"), "{log}");
    }

    #[test]
    fn the_shutdown_signal_stops_every_server_cleanly() {
        let asked = Arc::new(AtomicUsize::new(0));
        let (code, log) = supervised((0..3).map(|_| serving(&asked)).collect(), std::future::ready(()));
        assert_eq!(code, ExitCode::SUCCESS, "{log}");
        assert_eq!(asked.load(Ordering::SeqCst), 3, "{log}");
        assert!(!log.contains("ERROR"), "{log}");
        assert!(log.contains("stopped after finishing in-flight requests"), "{log}");
    }

    #[test]
    fn a_server_that_fails_while_draining_fails_the_shutdown() {
        let asked = Arc::new(AtomicUsize::new(0));
        let bodies = vec![serving(&asked), failing_when_asked(), serving(&asked)];
        let (code, log) = supervised(bodies, std::future::ready(()));
        assert_eq!(code, ExitCode::from(1), "{log}");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "{log}");
        assert!(log.contains("server failed server=1 error=drain failed"), "{log}");
        assert!(!log.contains("stopped unasked"), "asked, so not unasked:\n{log}");
    }
}
