//! MQTT 3.1.1 and 5 for devices, beside HTTP in the same server threads: each
//! thread accepts on its own `SO_REUSEPORT` listeners of `VT_MQTT_ADDR` (and of
//! `VT_MQTT_TLS_ADDR`, over TLS) and serves its connections with its own Redis
//! connection and token cache, as it does HTTP. A QoS 1 PUBLISH is acknowledged only once its readings are in
//! the stream. Why this shape, and what each refusal looks like on the wire:
//! docs/design.md, "MQTT".

mod codec;
mod limits;
mod publish;
mod registry;
mod session;
pub mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub use limits::Slots;
pub use publish::{check as check_publish, Refusal, TOPICS};

use crate::metrics;
use crate::state::AppState;
use limits::Slot;
use tls::TlsAcceptor;

/// Indexes into `metrics::MQTT_CONNECT_RESULTS`.
const OVER_LIMIT: usize = 4;
const TIMEOUT: usize = 5;
const TLS_FAILED: usize = 7;

/// Where MQTT connections come in: plain TCP, or TLS through `tls`.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// What every accept loop of a server thread shares.
#[derive(Clone)]
struct Shared {
    state: AppState,
    slots: Arc<Slots>,
    registry: registry::Registry,
    drain: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
}

/// Accepts connections on every listener until `stop` turns true (or its
/// sender is gone), then stops accepting, lets every connection answer what it
/// has in flight, and returns once all are closed.
pub async fn serve(
    listeners: Vec<Listener>,
    state: AppState,
    slots: Arc<Slots>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let registry = registry::Registry::default();
    let recheck = tokio::spawn(registry::recheck_forever(state.clone(), registry.clone()));
    let (drain_tx, drain) = watch::channel(false);
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let shared = Shared { state, slots, registry, drain, done };
    let loops = listeners.into_iter().map(|listener| accept(listener, shared.clone(), stop.clone()));
    futures_util::future::join_all(loops).await;
    drop(shared);
    let _ = drain_tx.send(true);
    let _ = all_done.recv().await;
    recheck.abort();
    Ok(())
}

/// One listener's accept loop, until `stop` turns true; the listener is closed on return.
async fn accept(listener: Listener, shared: Shared, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = turned_true(&mut stop) => break,
            accepted = listener.tcp.accept() => match accepted {
                Ok((tcp, _)) => {
                    let Some(slot) = shared.slots.take() else {
                        metrics::mqtt_connect(OVER_LIMIT);
                        continue;
                    };
                    // Acknowledgements are tiny: send each at once, not after Nagle's delay.
                    let _ = tcp.set_nodelay(true);
                    let cx = session::Context {
                        state: shared.state.clone(),
                        registry: shared.registry.clone(),
                        drain: shared.drain.clone(),
                        done: shared.done.clone(),
                    };
                    match &listener.tls {
                        None => tokio::spawn(session::run(tcp, cx, slot)),
                        Some(tls) => tokio::spawn(over_tls(tls.clone(), tcp, cx, slot)),
                    };
                }
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning, as axum's loop does.
                    tracing::warn!(error = %e, "cannot accept an MQTT connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The TLS handshake, within the CONNECT timeout, then the session as over plain TCP.
async fn over_tls(tls: TlsAcceptor, tcp: TcpStream, cx: session::Context, slot: Slot) {
    let mut drain = cx.drain.clone();
    let handshake = tokio::time::timeout(cx.state.config.mqtt.connect_timeout, tls.accept(tcp));
    tokio::select! {
        // A stopping server does not wait for handshakes: nothing is in flight yet.
        () = turned_true(&mut drain) => {}
        shaken = handshake => match shaken {
            Ok(Ok(stream)) => session::run(stream, cx, slot).await,
            Ok(Err(_)) => metrics::mqtt_connect(TLS_FAILED),
            Err(_) => metrics::mqtt_connect(TIMEOUT),
        },
    }
}

/// Resolves once the flag is true, or nobody can set it any more.
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|on| *on).await;
}
