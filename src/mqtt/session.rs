//! One MQTT session over either protocol version: a [`Client`] handle, its
//! [`EventLoop`] and the [`Event`]s every flow matches on, whatever rumqttc
//! module (`rumqttc` for 3.1.1, `rumqttc::v5`) speaks to the broker.
//!
//! Why a layer of our own: the two rumqttc modules have parallel but
//! distinct types (packets, QoS, errors), MQTT 5 acknowledgements carry
//! reason codes that rumqttc only logs (a PUBACK 0x87 "not authorized" is
//! an acknowledged *failure*), and the fallback from 5 to 3.1.1 when a
//! broker refuses the protocol must happen on the connection the command
//! already uses (a separate probe would cost a handshake and could take
//! over a persistent session).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;
use serde::{Deserialize, Serialize};

use super::reason::{self, Reason};
use super::Endpoint;

/// The MQTT protocol version (`-V`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 5 (reason codes, properties, session expiry).
    #[default]
    #[value(name = "5", alias = "mqttv5")]
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1.
    #[value(name = "311", alias = "mqttv311", alias = "3.1.1")]
    #[serde(rename = "311")]
    V311,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::V5 => "MQTT 5",
            Protocol::V311 => "MQTT 3.1.1",
        }
    }
}

/// How one session behaves, resolved by the command that opens it.
#[derive(Debug, Clone)]
pub struct Options {
    pub client_id: String,
    /// Keep the session (3.1.1: clean session off; 5: clean start off and
    /// a session that never expires) so subscriptions and queued messages
    /// survive a disconnect.
    pub persistent: bool,
    /// Acknowledge received QoS 1/2 messages only through [`Client::ack`].
    pub manual_acks: bool,
    /// Most of our QoS 1/2 publishes in flight (MQTT 5: at most the
    /// broker's Receive Maximum as well).
    pub inflight: Option<u16>,
    /// Largest packet we accept (MQTT 5 tells the broker in CONNECT).
    pub max_incoming: usize,
    /// Largest packet we send (MQTT 5: the broker's Maximum Packet Size wins).
    pub max_outgoing: usize,
    /// Requests the client handle can queue before the event loop takes them.
    pub channel: usize,
    pub nodelay: bool,
    pub connect_timeout: Option<Duration>,
}

impl Options {
    pub fn new(client_id: &str) -> Options {
        Options {
            client_id: client_id.to_string(),
            persistent: false,
            manual_acks: false,
            inflight: None,
            max_incoming: 256 * 1024,
            max_outgoing: 256 * 1024,
            channel: 10,
            nodelay: false,
            connect_timeout: None,
        }
    }
}

/// MQTT 5 publish properties (ignored over 3.1.1, which has none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Props {
    /// In order, keys may repeat: `[["key", "value"], ...]` in JSON.
    #[serde(rename = "user_properties", skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Seconds the broker may keep the message for subscribers (as
    /// received: what was left of it when the broker sent it).
    #[serde(rename = "message_expiry_s", skip_serializing_if = "Option::is_none")]
    pub message_expiry: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(
        rename = "correlation_data_hex",
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_bytes"
    )]
    pub correlation_data: Option<Bytes>,
    /// Payload format indicator 1: the payload is UTF-8 text.
    #[serde(rename = "payload_utf8", skip_serializing_if = "std::ops::Not::not")]
    pub utf8: bool,
}

fn hex_bytes<S: serde::Serializer>(b: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b.as_deref().unwrap_or_default()))
}

impl Props {
    pub fn is_empty(&self) -> bool {
        *self == Props::default()
    }

    fn to_v5(&self) -> p5::PublishProperties {
        p5::PublishProperties {
            payload_format_indicator: self.utf8.then_some(1),
            message_expiry_interval: self.message_expiry,
            topic_alias: None,
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user.clone(),
            subscription_identifiers: Vec::new(),
            content_type: self.content_type.clone(),
        }
    }

    fn from_v5(p: p5::PublishProperties) -> Props {
        Props {
            user: p.user_properties,
            content_type: p.content_type,
            message_expiry: p.message_expiry_interval,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            utf8: p.payload_format_indicator == Some(1),
        }
    }
}

/// One received message, as the handlers of every flow see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 properties, when the broker sent any.
    pub props: Option<Box<Props>>,
}

impl Message {
    pub fn new(topic: &str, qos: QoS, payload: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.to_string(),
            payload: payload.into(),
            qos,
            retain: false,
            dup: false,
            pkid: 0,
            props: None,
        }
    }

    fn from_v4(p: rumqttc::Publish) -> Message {
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            props: None,
        }
    }

    fn from_v5(p: p5::Publish) -> Message {
        let props = p.properties.map(Props::from_v5).filter(|p| !p.is_empty());
        // MQTT topics are UTF-8 (the broker checks); lossy never bites.
        let topic = String::from_utf8(p.topic.to_vec())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Message {
            topic,
            payload: p.payload,
            qos: qos_from_v5(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            props: props.map(Box::new),
        }
    }

    /// What an acknowledgement needs: the packet id and the QoS.
    fn ack_v4(&self) -> rumqttc::Publish {
        let mut p = rumqttc::Publish::from_bytes("", self.qos, Bytes::new());
        p.pkid = self.pkid;
        p
    }

    fn ack_v5(&self) -> p5::Publish {
        let mut p = p5::Publish::new("", qos_to_v5(self.qos), Bytes::new(), None);
        p.pkid = self.pkid;
        p
    }
}

/// A broker's acknowledgement of one of our publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    /// [`Reason::SUCCESS`] over 3.1.1, which has no reason codes.
    pub reason: Reason,
}

/// What one poll of the event loop produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected {
        session_present: bool,
    },
    Message(Message),
    /// QoS 1 done (successfully or not, by the reason).
    PubAck(Ack),
    /// QoS 2 first answer: a failure ends the exchange, no PUBCOMP follows.
    PubRec(Ack),
    /// QoS 2 done.
    PubComp(Ack),
    /// One entry per filter, in order: the granted QoS or the refusal.
    SubAck {
        pkid: u16,
        codes: Vec<Result<QoS, Reason>>,
    },
    /// A PUBLISH of ours was written (packet id 0 at QoS 0).
    Sent(u16),
    SentDisconnect,
    Other,
}

/// Why the connection failed, from whichever protocol module ran it.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    V4(#[from] rumqttc::ConnectionError),
    #[error(transparent)]
    V5(#[from] v5::ConnectionError),
}

impl ConnError {
    /// The size of a packet refused as larger than our limit.
    pub fn too_large(&self) -> Option<usize> {
        use rumqttc::{ConnectionError as C4, StateError as S4};
        use v5::{mqttbytes::Error as M5, ConnectionError as C5, StateError as S5};
        match self {
            ConnError::V4(C4::MqttState(S4::Deserialization(
                rumqttc::Error::PayloadSizeLimitExceeded(n),
            ))) => Some(*n),
            ConnError::V5(C5::MqttState(S5::IncomingPacketTooLarge { pkt_size, .. }))
            | ConnError::V5(C5::MqttState(S5::Deserialization(M5::PayloadSizeLimitExceeded {
                pkt_size,
                ..
            }))) => Some(*pkt_size),
            _ => None,
        }
    }

    /// The broker's DISCONNECT reason (MQTT 5 only).
    pub fn server_disconnect(&self) -> Option<Reason> {
        match self {
            ConnError::V5(v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
                reason_code,
                reason_string,
            })) => Some(Reason::with_text(
                reason::v5::disconnect(*reason_code),
                reason_string.clone(),
            )),
            _ => None,
        }
    }

    /// Why a first MQTT 5 CONNECT says the broker may not speak 5: CONNACK
    /// 0x84; a 3.1.1 CONNACK with return code 1 ("unacceptable protocol
    /// version"), which does not parse as MQTT 5 (its properties are
    /// missing); or the connection closed before any CONNACK, as some 3.1.1
    /// brokers answer an unknown protocol level.
    fn refuses_v5(&self) -> Option<&'static str> {
        use v5::{ConnectionError as C5, StateError as S5};
        match self {
            ConnError::V5(C5::ConnectionRefused(code))
                if reason::v5::connack(*code) == Reason::UNSUPPORTED_PROTOCOL_VERSION =>
            {
                Some("CONNACK 0x84 unsupported protocol version")
            }
            ConnError::V5(C5::MqttState(S5::Deserialization(_))) => {
                Some("a CONNACK that is not MQTT 5")
            }
            ConnError::V5(C5::MqttState(S5::ConnectionAborted)) => {
                Some("the connection closed without a CONNACK")
            }
            _ => None,
        }
    }
}

/// The request queue of the event loop is closed (the loop ended) or full.
#[derive(Debug, thiserror::Error)]
#[error("the MQTT event loop took no more requests (closed or full)")]
pub struct RequestError;

struct Handles {
    v5: Option<v5::AsyncClient>,
    /// Set from the start for 3.1.1, or by the fallback.
    v4: OnceLock<rumqttc::AsyncClient>,
}

/// The handle commands use to publish, subscribe and acknowledge; clones
/// share one connection.
#[derive(Clone)]
pub struct Client(Arc<Handles>);

enum Active<'a> {
    V4(&'a rumqttc::AsyncClient),
    V5(&'a v5::AsyncClient),
}

impl Client {
    fn active(&self) -> Active<'_> {
        match (self.0.v4.get(), &self.0.v5) {
            (Some(c), _) => Active::V4(c),
            (None, Some(c)) => Active::V5(c),
            (None, None) => unreachable!("a session has a client for one protocol"),
        }
    }

    /// The protocol the connection speaks now (after any fallback).
    pub fn protocol(&self) -> Protocol {
        match self.active() {
            Active::V4(_) => Protocol::V311,
            Active::V5(_) => Protocol::V5,
        }
    }

    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        props: Option<&Props>,
    ) -> Result<(), RequestError> {
        let sent = match (self.active(), props) {
            (Active::V4(c), _) => c.publish_bytes(topic, qos, retain, payload).await.is_ok(),
            (Active::V5(c), None) => (c.publish_bytes(topic, qos_to_v5(qos), retain, payload))
                .await
                .is_ok(),
            (Active::V5(c), Some(p)) => c
                .publish_bytes_with_properties(topic, qos_to_v5(qos), retain, payload, p.to_v5())
                .await
                .is_ok(),
        };
        sent.then_some(()).ok_or(RequestError)
    }

    /// As [`Client::publish`], without waiting for room in the queue.
    pub fn try_publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        props: Option<&Props>,
    ) -> Result<(), RequestError> {
        let sent = match (self.active(), props) {
            (Active::V4(c), _) => c.try_publish(topic, qos, retain, payload.to_vec()).is_ok(),
            (Active::V5(c), None) => c
                .try_publish(topic, qos_to_v5(qos), retain, payload)
                .is_ok(),
            (Active::V5(c), Some(p)) => c
                .try_publish_with_properties(topic, qos_to_v5(qos), retain, payload, p.to_v5())
                .is_ok(),
        };
        sent.then_some(()).ok_or(RequestError)
    }

    /// Subscribes to every filter in one SUBSCRIBE (answered by one SUBACK).
    pub fn try_subscribe(&self, filters: &[(String, QoS)]) -> Result<(), RequestError> {
        let sent = match self.active() {
            Active::V4(c) => c.try_subscribe_many(filters_v4(filters)).is_ok(),
            Active::V5(c) => c.try_subscribe_many(filters_v5(filters)).is_ok(),
        };
        sent.then_some(()).ok_or(RequestError)
    }

    pub async fn subscribe(&self, filters: &[(String, QoS)]) -> Result<(), RequestError> {
        let sent = match self.active() {
            Active::V4(c) => c.subscribe_many(filters_v4(filters)).await.is_ok(),
            Active::V5(c) => c.subscribe_many(filters_v5(filters)).await.is_ok(),
        };
        sent.then_some(()).ok_or(RequestError)
    }

    /// Queues the acknowledgement of a received message (manual acks).
    pub fn try_ack(&self, m: &Message) -> Result<(), RequestError> {
        match self.active() {
            Active::V4(c) => c.try_ack(&m.ack_v4()).map_err(|_| RequestError),
            Active::V5(c) => c.try_ack(&m.ack_v5()).map_err(|_| RequestError),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), RequestError> {
        match self.active() {
            Active::V4(c) => c.try_disconnect().map_err(|_| RequestError),
            Active::V5(c) => c.try_disconnect().map_err(|_| RequestError),
        }
    }
}

enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// What a fallback to 3.1.1 needs to build the new event loop.
struct Fallback {
    endpoint: Endpoint,
    opts: Options,
}

/// The event loop of one session; poll it (through [`super::poller::Poller`]
/// where a poll may be interrupted) to make progress.
pub struct EventLoop {
    inner: Loop,
    handles: Arc<Handles>,
    /// Set until the first CONNACK when 3.1.1 may stand in for 5.
    fallback: Option<Box<Fallback>>,
}

/// Opens a session on `endpoint` with the endpoint's protocol; nothing is
/// sent until the event loop is polled.
pub fn open(endpoint: &Endpoint, opts: &Options) -> (Client, EventLoop) {
    let handles;
    let inner = match endpoint.protocol {
        Protocol::V311 => {
            let (client, el) = open_v4(endpoint, opts);
            handles = Handles {
                v5: None,
                v4: OnceLock::from(client),
            };
            Loop::V4(Box::new(el))
        }
        Protocol::V5 => {
            let (client, el) = v5::AsyncClient::new(endpoint.mqtt5_options(opts), opts.channel);
            handles = Handles {
                v5: Some(client),
                v4: OnceLock::new(),
            };
            Loop::V5(Box::new(el))
        }
    };
    let handles = Arc::new(handles);
    let fallback = (endpoint.protocol == Protocol::V5 && endpoint.protocol_fallback).then(|| {
        Box::new(Fallback {
            endpoint: endpoint.clone(),
            opts: opts.clone(),
        })
    });
    let el = EventLoop {
        inner,
        handles: handles.clone(),
        fallback,
    };
    (Client(handles), el)
}

fn open_v4(endpoint: &Endpoint, opts: &Options) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let (client, mut el) = rumqttc::AsyncClient::new(endpoint.mqtt_options_for(opts), opts.channel);
    el.network_options = network_options(opts);
    (client, el)
}

pub(super) fn network_options(opts: &Options) -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(opts.nodelay);
    if let Some(t) = opts.connect_timeout {
        n.set_connection_timeout(t.as_secs().max(1));
    }
    n
}

impl EventLoop {
    /// The next event. Not cancel-safe (rumqttc's poll is not): use a
    /// [`super::poller::Poller`] where a poll races other futures.
    pub async fn poll(&mut self) -> Result<Event, ConnError> {
        loop {
            let result = match &mut self.inner {
                Loop::V4(el) => el.poll().await.map(from_v4).map_err(ConnError::V4),
                Loop::V5(el) => el.poll().await.map(from_v5).map_err(ConnError::V5),
            };
            match result {
                Ok(ev @ Event::Connected { .. }) => {
                    self.fallback = None;
                    return Ok(ev);
                }
                Err(e) if self.fallback.is_some() && e.refuses_v5().is_some() => {
                    self.fall_back(e.refuses_v5().unwrap_or_default())
                }
                other => return other,
            }
        }
    }

    /// The broker refused MQTT 5: the same session continues over 3.1.1,
    /// with the requests already queued moved over.
    fn fall_back(&mut self, why: &str) {
        let Some(fb) = self.fallback.take() else {
            return;
        };
        crate::note!(
            "{}: the broker refused MQTT 5 ({why}); using MQTT 3.1.1 (pass -V 311 to skip the attempt)",
            fb.endpoint.describe()
        );
        let (client, el) = open_v4(&fb.endpoint, &fb.opts);
        if let Loop::V5(old) = &mut self.inner {
            old.clean();
            for request in old.pending.drain(..) {
                requeue_v4(&client, request);
            }
        }
        // Only the fallback sets it, once.
        let _ = self.handles.v4.set(client);
        self.inner = Loop::V4(Box::new(el));
    }

    /// Events rumqttc read (or queued) but did not hand out yet, e.g.
    /// before a failure: callers account for them before reconnecting.
    pub fn drain_buffered(&mut self) -> Vec<Event> {
        match &mut self.inner {
            Loop::V4(el) => el.state.events.drain(..).map(from_v4).collect(),
            Loop::V5(el) => el.state.events.drain(..).map(from_v5).collect(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self.inner {
            Loop::V4(_) => Protocol::V311,
            Loop::V5(_) => Protocol::V5,
        }
    }
}

/// A request queued for the MQTT 5 connection, re-queued for 3.1.1
/// (before the first CONNACK only publishes, subscriptions and a
/// disconnect can be queued).
fn requeue_v4(client: &rumqttc::AsyncClient, request: v5::Request) {
    let _ = match request {
        v5::Request::Publish(p) => client.try_publish(
            String::from_utf8_lossy(&p.topic),
            qos_from_v5(p.qos),
            p.retain,
            p.payload.to_vec(),
        ),
        v5::Request::Subscribe(s) => client.try_subscribe_many(
            (s.filters.into_iter())
                .map(|f| rumqttc::SubscribeFilter::new(f.path, qos_from_v5(f.qos))),
        ),
        v5::Request::Disconnect => client.try_disconnect(),
        _ => Ok(()),
    };
}

fn from_v4(ev: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Incoming as I, Outgoing as O, SubscribeReasonCode as S};
    match ev {
        E::Incoming(I::Publish(p)) => Event::Message(Message::from_v4(p)),
        E::Incoming(I::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        E::Incoming(I::PubAck(a)) => Event::PubAck(success(a.pkid)),
        E::Incoming(I::PubRec(a)) => Event::PubRec(success(a.pkid)),
        E::Incoming(I::PubComp(a)) => Event::PubComp(success(a.pkid)),
        E::Incoming(I::SubAck(a)) => Event::SubAck {
            pkid: a.pkid,
            codes: (a.return_codes.into_iter())
                .map(|c| match c {
                    S::Success(q) => Ok(q),
                    S::Failure => Err(Reason::new(0x80)),
                })
                .collect(),
        },
        E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(O::Disconnect) => Event::SentDisconnect,
        _ => Event::Other,
    }
}

fn from_v5(ev: v5::Event) -> Event {
    use rumqttc::Outgoing as O;
    use v5::{Event as E, Incoming as I};
    match ev {
        E::Incoming(I::Publish(p)) => Event::Message(Message::from_v5(p)),
        E::Incoming(I::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        E::Incoming(I::PubAck(a)) => Event::PubAck(Ack {
            pkid: a.pkid,
            reason: Reason::with_text(
                reason::v5::puback(a.reason),
                a.properties.and_then(|p| p.reason_string),
            ),
        }),
        E::Incoming(I::PubRec(a)) => Event::PubRec(Ack {
            pkid: a.pkid,
            reason: Reason::with_text(
                reason::v5::pubrec(a.reason),
                a.properties.and_then(|p| p.reason_string),
            ),
        }),
        E::Incoming(I::PubComp(a)) => Event::PubComp(Ack {
            pkid: a.pkid,
            reason: Reason::with_text(
                reason::v5::pubcomp(a.reason),
                a.properties.and_then(|p| p.reason_string),
            ),
        }),
        E::Incoming(I::SubAck(a)) => {
            let text = a.properties.and_then(|p| p.reason_string);
            Event::SubAck {
                pkid: a.pkid,
                codes: (a.return_codes.into_iter())
                    .map(|c| match (c, reason::v5::suback(c)) {
                        (p5::SubscribeReasonCode::Success(q), _) => Ok(qos_from_v5(q)),
                        (_, code) => Err(Reason::with_text(code.unwrap_or(0x80), text.clone())),
                    })
                    .collect(),
            }
        }
        E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(O::Disconnect) => Event::SentDisconnect,
        _ => Event::Other,
    }
}

fn success(pkid: u16) -> Ack {
    Ack {
        pkid,
        reason: Reason::SUCCESS,
    }
}

fn filters_v4(filters: &[(String, QoS)]) -> impl Iterator<Item = rumqttc::SubscribeFilter> + '_ {
    (filters.iter()).map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), *q))
}

fn filters_v5(filters: &[(String, QoS)]) -> impl Iterator<Item = p5::Filter> + '_ {
    (filters.iter()).map(|(f, q)| p5::Filter::new(f.clone(), qos_to_v5(*q)))
}

fn qos_to_v5(q: QoS) -> Q5 {
    match q {
        QoS::AtMostOnce => Q5::AtMostOnce,
        QoS::AtLeastOnce => Q5::AtLeastOnce,
        QoS::ExactlyOnce => Q5::ExactlyOnce,
    }
}

fn qos_from_v5(q: Q5) -> QoS {
    match q {
        Q5::AtMostOnce => QoS::AtMostOnce,
        Q5::AtLeastOnce => QoS::AtLeastOnce,
        Q5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_acknowledgements_keep_their_reason() {
        let ack = p5::PubAck {
            pkid: 7,
            reason: p5::PubAckReason::NotAuthorized,
            properties: None,
        };
        let ev = from_v5(v5::Event::Incoming(v5::Incoming::PubAck(ack)));
        assert_eq!(
            ev,
            Event::PubAck(Ack {
                pkid: 7,
                reason: Reason::new(0x87)
            })
        );
        let sub = p5::SubAck {
            pkid: 1,
            return_codes: vec![
                p5::SubscribeReasonCode::Success(Q5::AtLeastOnce),
                p5::SubscribeReasonCode::NotAuthorized,
            ],
            properties: None,
        };
        let Event::SubAck { codes, .. } = from_v5(v5::Event::Incoming(v5::Incoming::SubAck(sub)))
        else {
            panic!("not a SUBACK")
        };
        assert_eq!(codes, vec![Ok(QoS::AtLeastOnce), Err(Reason::new(0x87))]);
    }

    #[test]
    fn a_3_1_1_refusal_of_version_5_is_recognised() {
        use v5::{mqttbytes::Error as M5, ConnectionError as C5, StateError as S5};
        let old_broker = ConnError::V5(C5::MqttState(S5::Deserialization(
            M5::InvalidConnectReturnCode(1),
        )));
        assert!(old_broker.refuses_v5().is_some());
        let v5_refusal = ConnError::V5(C5::ConnectionRefused(
            p5::ConnectReturnCode::UnsupportedProtocolVersion,
        ));
        assert!(v5_refusal.refuses_v5().is_some());
        let auth = ConnError::V5(C5::ConnectionRefused(p5::ConnectReturnCode::NotAuthorized));
        assert!(auth.refuses_v5().is_none());
    }

    #[test]
    fn properties_round_trip_through_rumqttc() {
        let props = Props {
            user: vec![("k".into(), "v".into())],
            content_type: Some("application/x-protobuf".into()),
            message_expiry: Some(60),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            utf8: true,
        };
        assert_eq!(Props::from_v5(props.to_v5()), props);
        assert!(Props::default().is_empty());
    }
}
