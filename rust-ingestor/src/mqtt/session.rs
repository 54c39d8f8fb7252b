//! One MQTT connection: CONNECT and its authentication, then PUBLISHes in,
//! PUBACKs out, in the order the PUBLISHes came (MQTT 4.6), each QoS 1 PUBACK
//! written only after the XADD that holds its readings returned an id.

use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{Publish, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::codec::{AckReason, Closing, Codec, Connect, Grant, Inbound, Refused};
use super::limits::{self, Slot};
use super::publish::{self, Batch, Done, Outcome, Pending, Refusal};
use super::registry::Registry;
use crate::auth::{self, Device};
use crate::error::ApiError;
use crate::metrics;
use crate::routes::epoch_ms;
use crate::state::AppState;

/// A client that reads nothing for this long is gone (or a slowloris): closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a refused 3.1.1 client to close its side (`Conn::linger`).
const LINGER: Duration = Duration::from_secs(2);
/// Indexes into `metrics::MQTT_CONNECT_RESULTS`.
const ACCEPTED: usize = 0;
const BAD_CREDENTIALS: usize = 1;
const NOT_AUTHORIZED: usize = 2;
const UNAVAILABLE: usize = 3;
const TIMEOUT: usize = 5;
const PROTOCOL_ERROR: usize = 6;
/// Indexes into `metrics::MQTT_MESSAGE_RESULTS`.
const MSG_ACCEPTED: usize = 0;
const MSG_UNAVAILABLE: usize = 5;
const MSG_QOS_REFUSED: usize = 6;

/// A connection's byte stream: plain TCP, or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// What the server thread hands every connection.
pub struct Context {
    pub state: AppState,
    pub registry: Registry,
    /// Turns true when the server stops: finish what is in flight, then close.
    pub drain: watch::Receiver<bool>,
    /// Held until the connection ends; the server waits for every one.
    pub done: mpsc::Sender<()>,
}

/// Serves one connection to its end.
pub async fn run(io: impl Transport, cx: Context, slot: Slot) {
    let _done = cx.done;
    // Small to start: most of 10,000s of connections are idle; the buffer grows for a large PUBLISH.
    let mut conn = Conn { io, inbuf: BytesMut::with_capacity(512), out: BytesMut::with_capacity(64) };
    let settings = &cx.state.config.mqtt;
    let max_packet = limits::max_packet(cx.state.config.limits.max_body_bytes);
    // The cold paths are boxed (here and in `Session::serve`): a future holds room for its largest
    // state as long as it lives, and an idle connection should pay only for the loop it idles in.
    let (mut codec, connect) =
        match Box::pin(tokio::time::timeout(settings.connect_timeout, conn.read_connect(max_packet))).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => return,
            Ok(Err(_)) => {
                metrics::mqtt_connect(PROTOCOL_ERROR);
                return;
            }
            Err(_) => {
                metrics::mqtt_connect(TIMEOUT);
                return;
            }
        };
    let Some((device, digest)) = Box::pin(authenticate(&cx.state, &mut codec, &connect, &mut conn)).await else {
        let _ = Box::pin(conn.flush()).await;
        return;
    };
    let (keep_alive, told_keep_alive) = limits::keep_alive(connect.keep_alive, settings.max_keep_alive);
    let receive_maximum = NonZeroU16::new(settings.receive_maximum).unwrap_or(NonZeroU16::MIN);
    let grant = Grant {
        receive_maximum,
        max_packet,
        keep_alive: told_keep_alive,
        assigned_client_id: connect.client_id.is_empty().then(|| format!("vt-{}-{:x}", device.id, epoch_ms())),
    };
    codec.connack(&grant, &mut conn.out);
    if Box::pin(conn.flush()).await.is_err() {
        return;
    }
    metrics::mqtt_connect(ACCEPTED);
    let registered = cx.registry.register(digest, device.id);
    let _open = Open::new();
    let session = Session {
        state: cx.state.clone(),
        codec,
        device,
        in_flight: FuturesOrdered::new(),
        pending: 0,
        receive_maximum: usize::from(receive_maximum.get()),
        batch: Batch::default(),
        storing: 0,
        silence: limits::silence_allowed(keep_alive),
    };
    let reason = session.serve(&mut conn, &registered.close, cx.drain).await;
    metrics::mqtt_disconnect(reason);
    drop(slot);
}

/// The open-connections gauge, up while a session lives.
struct Open;

impl Open {
    fn new() -> Self {
        metrics::mqtt_open(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::mqtt_open(-1.0);
    }
}

/// Checks the CONNECT's user name (the device token) and refuses what cannot
/// be served; the device and its token digest when the connection may go on.
async fn authenticate<S: Transport>(
    state: &AppState,
    codec: &mut Codec,
    connect: &Connect,
    conn: &mut Conn<S>,
) -> Option<(Device, [u8; 32])> {
    let token = connect.username.as_deref().unwrap_or_default();
    let refused = if token.is_empty() {
        Some((Refused::BadCredentials, BAD_CREDENTIALS))
    } else if codec.is_v5() && connect.will_qos == Some(QoS::ExactlyOnce) {
        Some((Refused::QosNotSupported, PROTOCOL_ERROR))
    } else {
        match auth::authenticate_token(state, token).await {
            Ok(device) => return Some((device, auth::token_digest(token))),
            Err(ApiError::Unavailable { .. }) => Some((Refused::Unavailable, UNAVAILABLE)),
            Err(_) => Some((Refused::NotAuthorized, NOT_AUTHORIZED)),
        }
    };
    if let Some((why, result)) = refused {
        metrics::mqtt_connect(result);
        codec.connack_refused(why, &mut conn.out);
    }
    None
}

struct Conn<S> {
    io: S,
    inbuf: BytesMut,
    out: BytesMut,
}

impl<S: Transport> Conn<S> {
    /// The codec of the client's version and its CONNECT; `None` when the client
    /// left first, an error for anything but a CONNECT.
    async fn read_connect(&mut self, max_packet: u32) -> Result<Option<(Codec, Connect)>, DecodeError> {
        let mut codec = None;
        loop {
            if codec.is_none() {
                codec = Codec::detect(&mut self.inbuf, max_packet)?;
            }
            if let Some(c) = codec.as_mut() {
                match c.decode(&mut self.inbuf)? {
                    Some(Inbound::Connect(connect)) => return Ok(codec.map(|c| (c, connect))),
                    Some(_) => return Err(DecodeError::UnsupportedPacketType),
                    None => {}
                }
            }
            if self.inbuf.len() > max_packet as usize {
                return Err(DecodeError::MaxSizeExceeded { size: 0, max: max_packet });
            }
            if self.io.read_buf(&mut self.inbuf).await.map_err(DecodeError::from)? == 0 {
                return Ok(None);
            }
        }
    }

    /// Closes after a refusal the client did not see coming (3.1.1 has no negative PUBACK), while
    /// it may still be sending: our side is shut first, so the PUBACKs already written go out before
    /// the FIN, and what the client still sends is read and dropped until it closes too (at most
    /// `LINGER`). Closed at once with unread bytes, the socket would answer with a reset instead, and
    /// the client's kernel may drop PUBACKs it had not handed to the client yet.
    async fn linger(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut sink = [0u8; 4096];
            while matches!(self.io.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Writes what is queued, within `WRITE_TIMEOUT`.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.io.write_all(&self.out)).await;
        self.out.clear();
        written.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

struct Session {
    state: AppState,
    codec: Codec,
    device: Device,
    /// Answers on their way, in arrival order.
    in_flight: FuturesOrdered<BoxFuture<'static, Done>>,
    /// PUBLISHes read and not yet answered (QoS 0 too: they hold memory alike).
    pending: usize,
    receive_maximum: usize,
    batch: Batch,
    /// XADDs of this connection in flight. While one is, new PUBLISHes gather in `batch`
    /// and go in one XADD when it returns: a pipelining client then costs few round trips.
    storing: usize,
    silence: Duration,
}

/// What a packet asks of the loop.
enum Next {
    Continue,
    /// Stop reading; answer what is in flight, then close (the reason).
    Finish(&'static str),
    /// Close now with this reason (MQTT 5 DISCONNECT first).
    Close(Closing, &'static str),
}

impl Session {
    /// The loop of one connection; the reason it ended (the disconnects metric's label).
    async fn serve<S: Transport>(
        mut self,
        conn: &mut Conn<S>,
        revoked: &tokio::sync::Notify,
        mut drain: watch::Receiver<bool>,
    ) -> &'static str {
        let mut last_heard = Instant::now();
        let idle = tokio::time::sleep(self.silence);
        tokio::pin!(idle);
        let mut reading = true;
        let mut finishing: &'static str = "client";
        loop {
            // Packets already buffered first, as far as the receive maximum allows.
            match self.take_buffered(conn) {
                Next::Continue => {}
                Next::Finish(reason) => {
                    reading = false;
                    finishing = reason;
                }
                Next::Close(why, reason) => return Box::pin(self.close(conn, why, reason)).await,
            }
            if conn.flush().await.is_err() {
                return "io";
            }
            if !reading && self.pending == 0 {
                if finishing == "shutdown" {
                    self.codec.disconnect(Closing::ShuttingDown, &mut conn.out);
                    let _ = Box::pin(conn.flush()).await;
                }
                if matches!(finishing, "backpressure" | "rate_limited") {
                    Box::pin(conn.linger()).await;
                }
                return finishing;
            }
            let may_read = reading && self.pending < self.receive_maximum;
            tokio::select! {
                biased;
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if let Err((why, reason)) = self.answer(&done, conn) {
                        return Box::pin(self.close(conn, why, reason)).await;
                    }
                }
                () = revoked.notified() => {
                    return Box::pin(self.close(conn, Closing::NotAuthorized, "revoked")).await;
                }
                () = super::turned_true(&mut drain), if reading => {
                    reading = false;
                    finishing = "shutdown";
                }
                read = conn.io.read_buf(&mut conn.inbuf), if may_read => match read {
                    Ok(0) => { reading = false; finishing = "client"; }
                    Ok(_) => last_heard = Instant::now(),
                    Err(_) => { reading = false; finishing = "io"; }
                },
                () = &mut idle => {
                    let deadline = last_heard + self.silence;
                    if Instant::now() >= deadline && reading {
                        return Box::pin(self.close(conn, Closing::KeepAliveTimeout, "keep_alive")).await;
                    }
                    let next = deadline.max(Instant::now() + self.silence / 4);
                    idle.as_mut().reset(tokio::time::Instant::from_std(next));
                }
            }
        }
    }

    /// Decodes what the buffer holds while answers may still be owed, and
    /// starts the XADD of the valid PUBLISHes among them.
    fn take_buffered<S>(&mut self, conn: &mut Conn<S>) -> Next {
        let mut next = Next::Continue;
        let now_ms = epoch_ms();
        while self.pending < self.receive_maximum {
            let packet = match self.codec.decode(&mut conn.inbuf) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(DecodeError::MaxSizeExceeded { .. }) => {
                    next = Next::Close(Closing::PacketTooLarge, "too_large");
                    break;
                }
                Err(_) => {
                    next = Next::Close(Closing::ProtocolError, "protocol_error");
                    break;
                }
            };
            next = match packet {
                Inbound::Publish(publish) => self.publish(&publish, now_ms),
                Inbound::Ping => {
                    self.codec.pingresp(&mut conn.out);
                    Next::Continue
                }
                Inbound::Subscribe { packet_id, filters } => {
                    self.codec.suback_refused(packet_id, filters, &mut conn.out);
                    Next::Continue
                }
                Inbound::Unsubscribe { packet_id, filters } => {
                    self.codec.unsuback(packet_id, filters, &mut conn.out);
                    Next::Continue
                }
                Inbound::Disconnect => Next::Finish("client"),
                Inbound::Connect(_) => Next::Close(Closing::ProtocolError, "protocol_error"),
                Inbound::Unexpected(what) => {
                    tracing::debug!(device = self.device.id, packet = what, "unexpected MQTT packet; closing");
                    Next::Close(Closing::ProtocolError, "protocol_error")
                }
            };
            if !matches!(next, Next::Continue) {
                break;
            }
        }
        if self.storing == 0 || !matches!(next, Next::Continue) {
            self.send_batch(now_ms);
        }
        next
    }

    fn publish(&mut self, publish: &Publish, now_ms: i64) -> Next {
        let qos = u8::from(publish.qos);
        let pending = Pending { packet_id: publish.packet_id, received: Instant::now() };
        match publish.qos {
            QoS::AtMostOnce | QoS::AtLeastOnce => {}
            QoS::ExactlyOnce => {
                metrics::mqtt_messages(qos, MSG_QOS_REFUSED, 1);
                crate::device_stats::rejected(self.device.id, 1, "qos_not_supported", now_ms);
                // MQTT 5 was granted QoS 1 at most in the CONNACK; 3.1.1 cannot be told.
                return Next::Close(Closing::QosNotSupported, "qos2");
            }
        }
        let limits = &self.state.config.limits;
        let checked = publish::check(&publish.topic, &publish.payload, now_ms, limits).and_then(|readings| {
            if crate::stream::over_high_water(&self.state, crate::stream::shard_of(&self.state, self.device.id)) {
                Err(Refusal::Backpressure)
            } else {
                let taken = self.state.limiter.take(self.device.id, &readings, now_ms, Instant::now());
                taken.map(|budget| (readings, budget)).map_err(|limited| Refusal::from(limited.budget))
            }
        });
        publish::count_refusal(self.device.id, &checked, &publish.payload, now_ms, limits);
        match checked {
            Ok((readings, budget)) => {
                if self.batch.readings() + readings.len() > limits.max_readings {
                    self.send_batch(now_ms);
                }
                self.batch.push(readings, budget, pending);
                self.pending += 1;
                Next::Continue
            }
            Err(why) if publish.qos == QoS::AtMostOnce => {
                metrics::mqtt_messages(0, why.result(), 1);
                Next::Continue
            }
            Err(why) if why.is_retryable() && !self.codec.is_v5() => {
                // 3.1.1 has no negative PUBACK: closing leaves the message with the client, to resend.
                metrics::mqtt_messages(qos, why.result(), 1);
                self.send_batch(now_ms);
                Next::Finish(if why == Refusal::Backpressure { "backpressure" } else { "rate_limited" })
            }
            Err(why) => {
                self.send_batch(now_ms);
                self.in_flight.push_back(publish::refused(pending, why));
                self.pending += 1;
                Next::Continue
            }
        }
    }

    fn send_batch(&mut self, now_ms: i64) {
        if !self.batch.is_empty() {
            let store = self.batch.store(&self.state, self.device.id, now_ms);
            self.in_flight.push_back(store);
            self.storing += 1;
        }
    }

    /// Writes the answers of one finished group; an error when the connection must close.
    fn answer<S>(&mut self, done: &Done, conn: &mut Conn<S>) -> Result<(), (Closing, &'static str)> {
        self.pending -= done.pending.len();
        if !matches!(done.outcome, Outcome::Refused(_)) {
            self.storing -= 1;
        }
        let (reason, result) = match &done.outcome {
            Outcome::Stored { readings } => {
                metrics::accepted(*readings);
                (AckReason::Success, MSG_ACCEPTED)
            }
            // 3.1.1 acknowledges a refused message too: it is counted and dropped, never resent.
            Outcome::Refused(why) => (
                match why {
                    Refusal::Invalid | Refusal::TooLarge => AckReason::PayloadFormatInvalid,
                    Refusal::Topic => AckReason::NotAuthorized,
                    Refusal::Backpressure | Refusal::RateLimited | Refusal::BackfillRateLimited => {
                        AckReason::QuotaExceeded
                    }
                },
                why.result(),
            ),
            Outcome::Unavailable => {
                // Not stored: the client resends these, and must not pay for them twice.
                let now = Instant::now();
                for (budget, n) in done.taken {
                    self.state.limiter.give_back(self.device.id, budget, n, now);
                }
                for p in &done.pending {
                    metrics::mqtt_messages(u8::from(p.packet_id.is_some()), MSG_UNAVAILABLE, 1);
                }
                // Nothing of it is durable: no PUBACK; the client resends after reconnecting.
                return Err((Closing::ServerBusy, "unavailable"));
            }
        };
        let now = Instant::now();
        let mut qos0 = 0;
        for p in &done.pending {
            match p.packet_id {
                Some(id) => {
                    self.codec.puback(id, reason, &mut conn.out);
                    metrics::mqtt_puback(now.saturating_duration_since(p.received));
                    metrics::mqtt_messages(1, result, 1);
                }
                None => qos0 += 1,
            }
        }
        if qos0 > 0 {
            metrics::mqtt_messages(0, result, qos0);
        }
        Ok(())
    }

    /// Answers nothing more; MQTT 5 is told why.
    async fn close<S: Transport>(&mut self, conn: &mut Conn<S>, why: Closing, reason: &'static str) -> &'static str {
        self.codec.disconnect(why, &mut conn.out);
        let _ = conn.flush().await;
        let _ = conn.io.shutdown().await;
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics, Config};

    /// Every idle connection holds its task's future; 10,000 of them must fit in
    /// the ingestor's memory budget, so the cold paths (CONNECT, refusals,
    /// closing) are boxed and cost nothing once done.
    #[tokio::test]
    async fn a_connection_holds_a_small_future() {
        let config = Config::from_lookup(|n| (n == "REDIS_URL").then(|| "redis://127.0.0.1:1/0".to_owned())).unwrap();
        let state = AppState::new(config, metrics::install()).unwrap();
        let (_drain_tx, drain) = watch::channel(false);
        let (done, _all_done) = mpsc::channel(1);
        let cx = Context { state, registry: Registry::default(), drain, done };
        let slot = limits::Slots::new(1).take().unwrap();
        let (io, _client) = tokio::io::duplex(64);
        let size = std::mem::size_of_val(&run(io, cx, slot));
        println!("the future of one connection: {size} bytes");
        assert!(size <= 2_048, "the future of one connection is {size} bytes");
    }
}
