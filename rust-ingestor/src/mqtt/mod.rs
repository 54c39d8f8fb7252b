//! MQTT 3.1.1 and 5 for devices, beside HTTP in the same server threads: each
//! thread accepts on its own `SO_REUSEPORT` listener of `VT_MQTT_ADDR` and
//! serves its connections with its own Redis connection and token cache, as it
//! does HTTP. A QoS 1 PUBLISH is acknowledged only once its readings are in
//! the stream. Why this shape, and what each refusal looks like on the wire:
//! docs/design.md, "MQTT".

mod codec;
mod limits;
mod publish;
mod registry;
mod session;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use limits::Slots;
pub use publish::{check as check_publish, Refusal, TOPICS};

use crate::metrics;
use crate::state::AppState;

/// Index into `metrics::MQTT_CONNECT_RESULTS`.
const OVER_LIMIT: usize = 4;

/// Accepts connections until `stop` turns true (or its sender is gone), then
/// stops accepting, lets every connection answer what it has in flight, and
/// returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    slots: Arc<Slots>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let registry = registry::Registry::default();
    let recheck = tokio::spawn(registry::recheck_forever(state.clone(), registry.clone()));
    let (drain_tx, drain) = watch::channel(false);
    let (done, mut all_done) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            () = turned_true(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let Some(slot) = slots.take() else {
                        metrics::mqtt_connect(OVER_LIMIT);
                        continue;
                    };
                    // Acknowledgements are tiny: send each at once, not after Nagle's delay.
                    let _ = tcp.set_nodelay(true);
                    let cx = session::Context {
                        state: state.clone(),
                        registry: registry.clone(),
                        drain: drain.clone(),
                        done: done.clone(),
                    };
                    tokio::spawn(session::run(tcp, cx, slot));
                }
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning, as axum's loop does.
                    tracing::warn!(error = %e, "cannot accept an MQTT connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    drop(done);
    let _ = all_done.recv().await;
    recheck.abort();
    Ok(())
}

/// Resolves once the flag is true, or nobody can set it any more.
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|on| *on).await;
}
