//! The two protocol versions behind one face: decoding into [`Inbound`] and
//! encoding the few packets a telemetry server sends (CONNACK, PUBACK, SUBACK,
//! UNSUBACK, PINGRESP, DISCONNECT). The wire format itself is rmqtt-codec's.

use std::num::NonZeroU16;

use bytes::BytesMut;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

/// What the server needs of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub username: Option<String>,
    pub client_id: String,
    pub keep_alive: u16,
    /// The QoS of the will message, if the CONNECT carries one.
    pub will_qos: Option<QoS>,
}

/// A packet from a client.
#[derive(Debug)]
pub enum Inbound {
    Connect(Connect),
    Publish(Box<Publish>),
    Subscribe {
        packet_id: NonZeroU16,
        filters: usize,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: usize,
    },
    Ping,
    Disconnect,
    /// A packet a client must not send to this server (PUBACK, PUBREL, AUTH, ...).
    Unexpected(&'static str),
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No user name (the device token).
    BadCredentials,
    /// Unknown, rotated or disabled token.
    NotAuthorized,
    /// The token index cannot be read.
    Unavailable,
    /// MQTT 5: a will of QoS 2.
    QosNotSupported,
}

/// The answer to one PUBLISH: success, or (MQTT 5 only) why it was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckReason {
    Success,
    NotAuthorized,
    QuotaExceeded,
    PayloadFormatInvalid,
}

/// Why the server closes a connection (MQTT 5 DISCONNECT reason; 3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    NotAuthorized,
    ServerBusy,
    ShuttingDown,
    KeepAliveTimeout,
    QosNotSupported,
    ProtocolError,
    PacketTooLarge,
}

/// What the server grants in a successful CONNACK.
#[derive(Debug, Clone)]
pub struct Grant {
    pub receive_maximum: NonZeroU16,
    pub max_packet: u32,
    /// MQTT 5: the keep-alive when it differs from the asked one.
    pub keep_alive: Option<u16>,
    /// MQTT 5: the client id given to a client that sent none.
    pub assigned_client_id: Option<String>,
}

pub enum Codec {
    V3(v3::Codec),
    V5(v5::Codec),
}

impl Codec {
    /// The codec for the version a buffered CONNECT asks for, once enough of it is there.
    pub fn detect(buf: &mut BytesMut, max_packet: u32) -> Result<Option<Self>, DecodeError> {
        Ok(VersionCodec.decode(buf)?.map(|version| match version {
            ProtocolVersion::MQTT3 => Self::V3(v3::Codec::new(max_packet)),
            ProtocolVersion::MQTT5 => Self::V5(v5::Codec::new(max_packet, 0)),
        }))
    }

    pub fn is_v5(&self) -> bool {
        matches!(self, Self::V5(_))
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        Ok(match self {
            Self::V3(c) => c.decode(buf)?.map(|(p, _)| from_v3(p)),
            Self::V5(c) => c.decode(buf)?.map(|(p, _)| from_v5(p)),
        })
    }

    pub fn connack_refused(&mut self, why: Refused, out: &mut BytesMut) {
        match self {
            Self::V3(c) => {
                let return_code = match why {
                    Refused::BadCredentials => v3::ConnectAckReason::BadUserNameOrPassword,
                    Refused::NotAuthorized | Refused::QosNotSupported => v3::ConnectAckReason::NotAuthorized,
                    Refused::Unavailable => v3::ConnectAckReason::ServiceUnavailable,
                };
                encode_v3(c, v3::Packet::ConnectAck(v3::ConnectAck { return_code, session_present: false }), out);
            }
            Self::V5(c) => {
                let reason_code = match why {
                    Refused::BadCredentials => v5::ConnectAckReason::BadUserNameOrPassword,
                    Refused::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                    Refused::Unavailable => v5::ConnectAckReason::ServerUnavailable,
                    Refused::QosNotSupported => v5::ConnectAckReason::QosNotSupported,
                };
                let ack = v5::ConnectAck { reason_code, ..v5::ConnectAck::default() };
                encode_v5(c, v5::Packet::ConnectAck(Box::new(ack)), out);
            }
        }
    }

    pub fn connack(&mut self, grant: &Grant, out: &mut BytesMut) {
        match self {
            Self::V3(c) => {
                let ack =
                    v3::ConnectAck { return_code: v3::ConnectAckReason::ConnectionAccepted, session_present: false };
                encode_v3(c, v3::Packet::ConnectAck(ack), out);
            }
            Self::V5(c) => {
                let ack = v5::ConnectAck {
                    receive_max: grant.receive_maximum,
                    max_qos: QoS::AtLeastOnce,
                    max_packet_size: Some(grant.max_packet),
                    server_keepalive_sec: grant.keep_alive,
                    assigned_client_id: grant.assigned_client_id.as_deref().map(Into::into),
                    topic_alias_max: 0,
                    retain_available: false,
                    wildcard_subscription_available: false,
                    subscription_identifiers_available: false,
                    shared_subscription_available: false,
                    ..v5::ConnectAck::default()
                };
                encode_v5(c, v5::Packet::ConnectAck(Box::new(ack)), out);
            }
        }
    }

    /// A PUBACK; 3.1.1 has no reason code, so there every PUBACK is a plain one.
    pub fn puback(&mut self, packet_id: NonZeroU16, reason: AckReason, out: &mut BytesMut) {
        match self {
            Self::V3(c) => encode_v3(c, v3::Packet::PublishAck { packet_id }, out),
            Self::V5(c) => {
                let reason_code = match reason {
                    AckReason::Success => v5::PublishAckReason::Success,
                    AckReason::NotAuthorized => v5::PublishAckReason::NotAuthorized,
                    AckReason::QuotaExceeded => v5::PublishAckReason::QuotaExceeded,
                    AckReason::PayloadFormatInvalid => v5::PublishAckReason::PayloadFormatInvalid,
                };
                let ack = v5::PublishAck { packet_id, reason_code, properties: Vec::new(), reason_string: None };
                encode_v5(c, v5::Packet::PublishAck(ack), out);
            }
        }
    }

    /// Refuses every filter: this server has nothing to subscribe to.
    pub fn suback_refused(&mut self, packet_id: NonZeroU16, filters: usize, out: &mut BytesMut) {
        match self {
            Self::V3(c) => {
                let status = vec![v3::SubscribeReturnCode::Failure; filters];
                encode_v3(c, v3::Packet::SubscribeAck { packet_id, status }, out);
            }
            Self::V5(c) => {
                let status = vec![v5::SubscribeAckReason::NotAuthorized; filters];
                let ack = v5::SubscribeAck { packet_id, properties: Vec::new(), reason_string: None, status };
                encode_v5(c, v5::Packet::SubscribeAck(ack), out);
            }
        }
    }

    pub fn unsuback(&mut self, packet_id: NonZeroU16, filters: usize, out: &mut BytesMut) {
        match self {
            Self::V3(c) => encode_v3(c, v3::Packet::UnsubscribeAck { packet_id }, out),
            Self::V5(c) => {
                let status = vec![v5::UnsubscribeAckReason::NoSubscriptionExisted; filters];
                let ack = v5::UnsubscribeAck { packet_id, properties: Vec::new(), reason_string: None, status };
                encode_v5(c, v5::Packet::UnsubscribeAck(ack), out);
            }
        }
    }

    pub fn pingresp(&mut self, out: &mut BytesMut) {
        match self {
            Self::V3(c) => encode_v3(c, v3::Packet::PingResponse, out),
            Self::V5(c) => encode_v5(c, v5::Packet::PingResponse, out),
        }
    }

    /// MQTT 5 DISCONNECT with the reason; nothing for 3.1.1 (the server just closes).
    pub fn disconnect(&mut self, why: Closing, out: &mut BytesMut) {
        let Self::V5(c) = self else { return };
        let reason_code = match why {
            Closing::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
            Closing::ServerBusy => v5::DisconnectReasonCode::ServerBusy,
            Closing::ShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
            Closing::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
            Closing::QosNotSupported => v5::DisconnectReasonCode::QosNotSupported,
            Closing::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
            Closing::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
        };
        let packet = v5::Disconnect {
            reason_code,
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: None,
            user_properties: Vec::new(),
        };
        encode_v5(c, v5::Packet::Disconnect(packet), out);
    }
}

// Encoding the server's own small packets fails only on a bug (sizes are far
// below every limit); a failed one is logged and left out.
fn encode_v3(c: &mut v3::Codec, p: v3::Packet, out: &mut BytesMut) {
    if let Err(e) = c.encode(p, out) {
        tracing::error!(error = %e, "cannot encode an MQTT 3.1.1 packet");
    }
}

fn encode_v5(c: &mut v5::Codec, p: v5::Packet, out: &mut BytesMut) {
    if let Err(e) = c.encode(p, out) {
        tracing::error!(error = %e, "cannot encode an MQTT 5 packet");
    }
}

fn from_v3(p: v3::Packet) -> Inbound {
    match p {
        v3::Packet::Connect(c) => Inbound::Connect(Connect {
            username: c.username.map(|u| u.to_string()),
            client_id: c.client_id.to_string(),
            keep_alive: c.keep_alive,
            will_qos: c.last_will.map(|w| w.qos),
        }),
        v3::Packet::Publish(p) => Inbound::Publish(p),
        v3::Packet::Subscribe { packet_id, topic_filters } => {
            Inbound::Subscribe { packet_id, filters: topic_filters.len() }
        }
        v3::Packet::Unsubscribe { packet_id, topic_filters } => {
            Inbound::Unsubscribe { packet_id, filters: topic_filters.len() }
        }
        v3::Packet::PingRequest => Inbound::Ping,
        v3::Packet::Disconnect => Inbound::Disconnect,
        v3::Packet::PublishRelease { .. } | v3::Packet::PublishReceived { .. } | v3::Packet::PublishComplete { .. } => {
            Inbound::Unexpected("QoS 2 flow")
        }
        _ => Inbound::Unexpected("server packet"),
    }
}

fn from_v5(p: v5::Packet) -> Inbound {
    match p {
        v5::Packet::Connect(c) => Inbound::Connect(Connect {
            username: c.username.map(|u| u.to_string()),
            client_id: c.client_id.to_string(),
            keep_alive: c.keep_alive,
            will_qos: c.last_will.map(|w| w.qos),
        }),
        v5::Packet::Publish(p) => Inbound::Publish(p),
        v5::Packet::Subscribe(s) => Inbound::Subscribe { packet_id: s.packet_id, filters: s.topic_filters.len() },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe { packet_id: u.packet_id, filters: u.topic_filters.len() },
        v5::Packet::PingRequest => Inbound::Ping,
        v5::Packet::Disconnect(_) => Inbound::Disconnect,
        v5::Packet::PublishRelease(_) | v5::Packet::PublishReceived(_) | v5::Packet::PublishComplete(_) => {
            Inbound::Unexpected("QoS 2 flow")
        }
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        _ => Inbound::Unexpected("server packet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    /// CONNECT of 3.1.1 with user name `tok`, client id `c1`, keep-alive 30.
    const CONNECT_311: &[u8] = b"\x10\x13\x00\x04MQTT\x04\x82\x00\x1e\x00\x02c1\x00\x03tok";

    #[test]
    fn a_311_connect_is_detected_and_read() {
        let mut buf = BytesMut::from(CONNECT_311);
        let mut codec = Codec::detect(&mut buf, 1024).unwrap().unwrap();
        assert!(!codec.is_v5());
        let Some(Inbound::Connect(c)) = codec.decode(&mut buf).unwrap() else { panic!() };
        assert_eq!(c, Connect { username: Some("tok".into()), client_id: "c1".into(), keep_alive: 30, will_qos: None });
        assert!(buf.is_empty());
    }

    #[test]
    fn a_partial_connect_waits_for_more() {
        let mut buf = BytesMut::from(&CONNECT_311[..5]);
        assert!(Codec::detect(&mut buf, 1024).unwrap().is_none());
    }

    #[test]
    fn a_first_packet_that_is_not_connect_is_an_error() {
        let mut buf = BytesMut::from(&b"\x30\x05\x00\x01ab"[..]);
        assert!(Codec::detect(&mut buf, 1024).is_err());
    }

    #[test]
    fn v311_answers_have_their_fixed_bytes() {
        let mut codec = Codec::V3(v3::Codec::new(1024));
        let mut out = BytesMut::new();
        codec.connack_refused(Refused::BadCredentials, &mut out);
        codec.connack_refused(Refused::NotAuthorized, &mut out);
        codec.puback(nz(7), AckReason::PayloadFormatInvalid, &mut out);
        codec.pingresp(&mut out);
        codec.disconnect(Closing::ServerBusy, &mut out);
        assert_eq!(&out[..], b"\x20\x02\x00\x04\x20\x02\x00\x05\x40\x02\x00\x07\xd0\x00");
    }

    #[test]
    fn v5_pubacks_carry_their_reason_code() {
        let mut codec = Codec::V5(v5::Codec::new(1024, 0));
        let mut out = BytesMut::new();
        codec.puback(nz(1), AckReason::Success, &mut out);
        assert_eq!(&out[..], b"\x40\x04\x00\x01\x00\x00", "reason 0 and no properties");
        for (reason, code) in [
            (AckReason::PayloadFormatInvalid, 0x99),
            (AckReason::NotAuthorized, 0x87),
            (AckReason::QuotaExceeded, 0x97),
        ] {
            out.clear();
            codec.puback(nz(2), reason, &mut out);
            assert_eq!(&out[..4], b"\x40\x04\x00\x02");
            assert_eq!(out[4], code);
        }
        out.clear();
        codec.connack_refused(Refused::NotAuthorized, &mut out);
        assert_eq!(out[3], 0x87);
        out.clear();
        codec.connack_refused(Refused::BadCredentials, &mut out);
        assert_eq!(out[3], 0x86);
    }

    #[test]
    fn a_v5_connack_grants_qos_1_and_the_receive_maximum() {
        let mut codec = Codec::V5(v5::Codec::new(1024, 0));
        let mut out = BytesMut::new();
        let grant = Grant { receive_maximum: nz(16), max_packet: 2048, keep_alive: Some(60), assigned_client_id: None };
        codec.connack(&grant, &mut out);
        let mut client = v5::Codec::new(0, 0);
        let Some((v5::Packet::ConnectAck(ack), _)) = client.decode(&mut out).unwrap() else { panic!() };
        assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
        assert_eq!(ack.max_qos, QoS::AtLeastOnce);
        assert_eq!(ack.receive_max, nz(16));
        assert_eq!(ack.max_packet_size, Some(2048));
        assert_eq!(ack.server_keepalive_sec, Some(60));
        assert!(!ack.retain_available);
    }
}
