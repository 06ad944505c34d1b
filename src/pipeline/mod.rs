//! The one subscriber pipeline under `sub`, the sink and `bench`: connect,
//! subscribe, receive, hand each message to a [`Handler`], commit in batches,
//! acknowledge only what a successful commit made durable, reconnect with one
//! policy, and stop on one [`Shutdown`].
//!
//! A top-level module, not part of `mqtt`: `mqtt` is the connection layer
//! (endpoints, TLS, the cancel-safe [`Poller`]) that the publisher, `probe`
//! and `doctor` use too, while this is the subscriber's control flow above
//! it; `flows`, `sink` and `bench` are handlers over it and depend on it, not
//! on each other.
//!
//! Everything runs in one task (started on a runtime worker by the callers,
//! see `flows::on_worker`): the commit of a batch runs concurrently with
//! polling the connection (keep-alives go on, new messages wait in a backlog),
//! so a slow store never stalls the socket, and no channel hop sits between
//! the socket and the handler. Acknowledgements are queued with `try_ack`
//! (the request channel holds every packet id the broker can have in flight,
//! so it never blocks the task that must drain it); the patched rumqttc
//! writes all queued acks of a batch in one TLS record
//! (vendor/rumqttc/MQTTKIT-PATCH.md).

pub mod quarantine;
pub mod reconnect;
pub mod shutdown;

use std::collections::VecDeque;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rumqttc::QoS;

use crate::mqtt::poller::Poller;
use crate::mqtt::{session, Client, Endpoint, Event, Message, Options, Reason};
pub use reconnect::{Backoff, Reconnect};
pub use shutdown::{Shutdown, Trigger};

pub use crate::mqtt::qos;

/// What a subscriber run needs, resolved from the command line by its caller.
#[derive(Debug, Clone)]
pub struct SubscribeConfig {
    pub filters: Vec<String>,
    pub qos: QoS,
    pub client_id: String,
    /// Clean session off: the broker keeps the subscription and what arrives
    /// while we are away (use with a fixed client id).
    pub persistent: bool,
    /// Give up after this long without a connection; `None`: a lost
    /// connection ends the run (the bench counts loss instead of hiding it).
    pub reconnect_timeout: Option<Duration>,
    /// Stop after this many messages the handler counted.
    pub count: Option<u64>,
    pub acks: Acks,
    /// Overrides rumqttc's connection timeout (many handshakes at once).
    pub connect_timeout: Option<Duration>,
    /// Largest packet taken from the broker (`--max-packet`); a larger one
    /// ends the run with an error naming the flag (never a reconnect loop).
    pub max_packet: usize,
}

/// The largest packet MQTT can carry (a 268,435,455-byte remaining length
/// plus a 5-byte header): mosquitto's default limit, and the default here,
/// so no message the broker accepts can stop a consumer.
pub const MQTT_MAX_PACKET: u64 = 256 * 1024 * 1024;

/// What our own packets (SUBSCRIBE, acknowledgements) may be at most.
const MAX_OUTGOING: usize = 256 * 1024;

/// `--max-packet SIZE` (bytes, KiB, MiB...): at least 1 KiB, at most [`MQTT_MAX_PACKET`].
pub fn parse_max_packet(s: &str) -> Result<usize, String> {
    let n = crate::units::parse_size(s)?;
    if !(1024..=MQTT_MAX_PACKET).contains(&n) {
        return Err(format!(
            "'{s}' is out of range; use 1KiB to 256MiB (MQTT's largest packet; set it at least as large as the broker's message_size_limit)"
        ));
    }
    Ok(n as usize)
}

/// When messages are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// After the commit that made them durable; messages past `count` never.
    AfterCommit,
    /// By rumqttc on receipt: for handlers that cannot fail to take a message
    /// and have no count (the bench), one channel hop less per message.
    OnReceipt,
}

/// What the handler did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Taken; counts towards `count`.
    Counted,
    /// Taken again: a redelivery of a message already counted.
    Repeated,
    /// Cannot ever be taken (empty, too large, undecodable): warned about,
    /// kept by the handler in its dead-letter place (see [`quarantine`]) and
    /// acknowledged with the next commit, so it never blocks the session.
    Skipped,
}

/// How long handled messages may wait for a commit.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Longest the first uncommitted message waits.
    pub max_wait: Duration,
    /// Commit as soon as this many are uncommitted (1: after every message).
    pub max_messages: usize,
}

/// A subscriber's work on the messages the pipeline hands over.
pub trait Handler: Send {
    /// Takes one message (decode, print, buffer a row). It becomes durable
    /// only with the next successful [`Handler::commit`].
    fn handle(&mut self, p: &Message) -> Result<Handled>;

    /// Makes everything handled so far durable (flush stdout, commit rows);
    /// only after `Ok` are those messages acknowledged. Runs while the
    /// pipeline keeps polling the connection.
    fn commit(&mut self) -> impl Future<Output = Result<()>> + Send;

    fn batching(&self) -> Batching;

    /// The subscription is in place: `resumed` when the broker kept it in
    /// the persistent session, so no SUBSCRIBE was sent.
    fn subscribed(&mut self, resumed: bool);

    /// An answer to publish for a message just handled (MQTT 5
    /// request/response: `sub command --reply`).
    fn reply(&mut self, _p: &Message) -> Option<Reply> {
        None
    }
}

/// A message a handler sends back (QoS 1, on the same connection).
#[derive(Debug, Clone)]
pub struct Reply {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub props: crate::mqtt::Props,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Count,
    Signal,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub counted: u64,
    pub skipped: u64,
    pub reconnects: u64,
    pub end: End,
}

impl Summary {
    /// Whether a `--count` run was stopped before it got its messages.
    pub fn short_of(&self, count: Option<u64>) -> bool {
        count.is_some_and(|n| self.counted < n)
    }
}

/// Messages taken from the network while a commit runs, at most; past this
/// the connection waits (a store that fails for long must not eat memory).
const BACKLOG_MAX: usize = 100_000;
/// Longest the final DISCONNECT and the broker's close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the subscriber until `count` messages were counted or a stop is
/// requested; the last batch is committed and acknowledged before the
/// DISCONNECT.
pub async fn run<H: Handler>(
    endpoint: &Endpoint,
    cfg: &SubscribeConfig,
    shutdown: Shutdown,
    handler: &mut H,
) -> Result<Summary> {
    let mut session = Session::connect(endpoint, cfg);
    let mut run = Run {
        cfg,
        shutdown,
        pending: Vec::new(),
        uncommitted: 0,
        counted: 0,
        skipped: 0,
    };
    if cfg.count == Some(0) {
        return Ok(run.summary(&session, End::Count));
    }
    let result = run.receive(&mut session, handler).await;
    // On an error nothing more is acknowledged (the broker keeps it).
    let end = result?;
    if end == End::Signal {
        // Take what rumqttc already read from the socket.
        session.drain_read();
        while let Some((generation, p)) = session.backlog.pop_front() {
            run.take(&session, handler, generation, p)?;
        }
    }
    run.commit(&mut session, handler).await?;
    let summary = run.summary(&session, end);
    session.close().await;
    Ok(summary)
}

/// The receiving side of one run: counts and the messages awaiting a commit.
struct Run<'a> {
    cfg: &'a SubscribeConfig,
    shutdown: Shutdown,
    /// Handled, not yet committed, with the connection they came on.
    pending: Vec<(u64, Message)>,
    uncommitted: usize,
    counted: u64,
    skipped: u64,
}

impl Run<'_> {
    async fn receive<H: Handler>(&mut self, session: &mut Session, handler: &mut H) -> Result<End> {
        let batching = handler.batching();
        // One timer, re-armed: not a new timer registration per batch.
        let timer = tokio::time::sleep(batching.max_wait);
        tokio::pin!(timer);
        let mut armed = false;
        loop {
            if self.reached() {
                return Ok(End::Count);
            }
            let mut commit_now = false;
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => return Ok(End::Signal),
                _ = &mut timer, if armed => commit_now = true,
                d = session.next() => match d? {
                    Delivery::Subscribed { resumed } => handler.subscribed(resumed),
                    Delivery::Publish(generation, p) => {
                        self.take(session, handler, generation, p)?;
                        commit_now = self.uncommitted >= batching.max_messages;
                        if !armed && self.uncommitted > 0 && !commit_now {
                            timer.as_mut().reset(tokio::time::Instant::now() + batching.max_wait);
                            armed = true;
                        }
                    }
                },
            }
            if commit_now {
                armed = false;
                self.commit(session, handler).await?;
            }
        }
    }

    fn reached(&self) -> bool {
        self.cfg.count.is_some_and(|n| self.counted >= n)
    }

    /// Hands one message to the handler, unless the count is already reached
    /// (then it is left unacknowledged, for the next session).
    fn take<H: Handler>(
        &mut self,
        session: &Session,
        handler: &mut H,
        generation: u64,
        p: Message,
    ) -> Result<()> {
        if self.reached() {
            return Ok(());
        }
        match handler.handle(&p)? {
            Handled::Counted => self.counted += 1,
            Handled::Repeated => {}
            Handled::Skipped => self.skipped += 1,
        }
        if let Some(r) = handler.reply(&p) {
            (session.client)
                .try_publish(&r.topic, QoS::AtLeastOnce, false, r.payload, Some(&r.props))
                .context("queueing a reply")?;
        }
        self.uncommitted += 1;
        if session.manual_acks {
            self.pending.push((generation, p));
        }
        Ok(())
    }

    /// Commits what was handled while the connection keeps being polled,
    /// then acknowledges it (only what came on the current connection: the
    /// packet ids of a dead one mean other messages now).
    async fn commit<H: Handler>(&mut self, session: &mut Session, handler: &mut H) -> Result<()> {
        if self.uncommitted == 0 {
            return Ok(());
        }
        {
            let commit = handler.commit();
            tokio::pin!(commit);
            loop {
                tokio::select! {
                    biased;
                    done = &mut commit => break done?,
                    d = session.poll_network(), if session.backlog.len() < BACKLOG_MAX => {
                        if let Some(d) = d? {
                            session.defer(d);
                        }
                    }
                }
            }
        }
        self.uncommitted = 0;
        for (generation, p) in self.pending.drain(..) {
            if generation == session.generation {
                session
                    .client
                    .try_ack(&p)
                    .context("queueing an acknowledgement")?;
            }
        }
        // The acks are only queued: send them now, not when the backlog is
        // handled and the next commit polls again, so the broker refills its
        // in-flight window while we work (a drain ran at half speed without).
        session.flush_requests().await
    }

    fn summary(&self, session: &Session, end: End) -> Summary {
        Summary {
            counted: self.counted,
            skipped: self.skipped,
            reconnects: session.reconnect.reconnects,
            end,
        }
    }
}

/// One thing the connection produced for the handler.
enum Delivery {
    /// A message and the connection (generation) it came on.
    Publish(u64, Message),
    Subscribed {
        resumed: bool,
    },
}

/// The connection: its event loop, the subscription and reconnects.
struct Session {
    client: Client,
    poller: Poller,
    reconnect: Reconnect,
    filters: Vec<(String, QoS)>,
    manual_acks: bool,
    subscribed: bool,
    /// Counts connections; acks of an older one are dropped.
    generation: u64,
    retry_at: Option<tokio::time::Instant>,
    /// Deliveries taken from the network while a commit ran, or read before
    /// a failure: handed out before anything new.
    backlog: VecDeque<(u64, Message)>,
    deferred_subscribed: Option<bool>,
    max_packet: usize,
    /// Who we subscribe as, named in a refusal.
    identity: crate::mqtt::Who,
}

impl Session {
    fn connect(endpoint: &Endpoint, cfg: &SubscribeConfig) -> Self {
        let manual_acks = cfg.acks == Acks::AfterCommit;
        let opts = Options {
            persistent: cfg.persistent,
            manual_acks,
            max_incoming: cfg.max_packet,
            max_outgoing: MAX_OUTGOING,
            // Every ack goes through this channel while we are the one
            // polling, so it must hold as many as the broker can have in flight.
            channel: u16::MAX as usize + 16,
            // QoS 2: PUBREC and PUBCOMP are small writes answering the broker;
            // Nagle would hold each behind the last one's delayed ACK.
            nodelay: cfg.qos == QoS::ExactlyOnce,
            connect_timeout: cfg.connect_timeout,
            ..Options::new(&cfg.client_id)
        };
        let (client, eventloop) = session::open(endpoint, &opts);
        Session {
            client,
            // Cancel-safe: timers and commits interrupt polls, and an
            // interrupted write (an acknowledgement) must not be lost.
            poller: Poller::new(eventloop),
            reconnect: Reconnect::new(endpoint, cfg.reconnect_timeout),
            identity: endpoint.who(),
            filters: (cfg.filters.iter()).map(|f| (f.clone(), cfg.qos)).collect(),
            manual_acks,
            subscribed: false,
            generation: 0,
            retry_at: None,
            backlog: VecDeque::new(),
            deferred_subscribed: None,
            max_packet: cfg.max_packet,
        }
    }

    /// The next delivery, the backlog first. Cancel-safe.
    async fn next(&mut self) -> Result<Delivery> {
        if let Some(resumed) = self.deferred_subscribed.take() {
            return Ok(Delivery::Subscribed { resumed });
        }
        if let Some((generation, p)) = self.backlog.pop_front() {
            return Ok(Delivery::Publish(generation, p));
        }
        loop {
            if let Some(d) = self.poll_network().await? {
                return Ok(d);
            }
        }
    }

    /// Polls the connection without waiting until it has nothing ready:
    /// queued requests (acks) are written, and what the socket already holds
    /// goes to the backlog. Safe to stop at `Pending`: the [`Poller`] resumes.
    async fn flush_requests(&mut self) -> Result<()> {
        std::future::poll_fn(|cx| {
            while self.backlog.len() < BACKLOG_MAX {
                let polled = std::pin::pin!(self.poll_network()).poll(cx);
                match polled {
                    Poll::Pending => break,
                    Poll::Ready(Ok(Some(d))) => self.defer(d),
                    Poll::Ready(Ok(None)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    fn defer(&mut self, d: Delivery) {
        match d {
            Delivery::Publish(generation, p) => self.backlog.push_back((generation, p)),
            Delivery::Subscribed { resumed } => self.deferred_subscribed = Some(resumed),
        }
    }

    /// One event from the connection (waiting out a reconnect delay first);
    /// `None` for events that are the session's own business. Cancel-safe:
    /// the delay and the poll resume where they stopped.
    async fn poll_network(&mut self) -> Result<Option<Delivery>> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        match self.poller.next().await {
            Ok(Event::Message(p)) => Ok(Some(Delivery::Publish(self.generation, p))),
            Ok(Event::Connected { session_present }) => {
                self.reconnect.connected();
                // A resumed session still has the subscription; subscribing
                // again while mosquitto resends its in-flight messages gets
                // the connection dropped with a protocol error.
                if !session_present {
                    (self.client)
                        .try_subscribe(&self.filters)
                        .context("subscribing")?;
                    Ok(None)
                } else {
                    Ok(self.first_subscription(true))
                }
            }
            Ok(Event::SubAck { codes, .. }) => {
                check_suback(&self.filters, &codes, self.client.protocol(), &self.identity)?;
                Ok(self.first_subscription(false))
            }
            Ok(_) => Ok(None),
            Err(e) if e.too_large().is_some() => bail!(
                "the broker sent a {}-byte packet, larger than --max-packet {}; raise --max-packet (up to 256MiB) to at least the broker's message_size_limit",
                e.too_large().unwrap_or_default(),
                self.max_packet
            ),
            Err(e) => {
                // rumqttc keeps events it read before the failure and would
                // hand them out after the next CONNACK: hand them out now,
                // under the dead connection's generation (never acked).
                self.drain_read();
                self.generation += 1;
                let delay = self.reconnect.failed(e)?;
                self.retry_at = Some(tokio::time::Instant::now() + delay);
                Ok(None)
            }
        }
    }

    fn first_subscription(&mut self, resumed: bool) -> Option<Delivery> {
        if self.subscribed {
            return None;
        }
        self.subscribed = true;
        Some(Delivery::Subscribed { resumed })
    }

    /// Moves the messages rumqttc read but did not hand out into the backlog.
    fn drain_read(&mut self) {
        let generation = self.generation;
        if let Some(eventloop) = self.poller.eventloop_mut() {
            for ev in eventloop.drain_buffered() {
                if let Event::Message(p) = ev {
                    self.backlog.push_back((generation, p));
                }
            }
        }
    }

    /// DISCONNECT after the queued acks, then read on until the broker
    /// closes: closing a socket with unread data resets it, and the broker
    /// may then drop the last acks unread.
    async fn close(mut self) {
        if self.retry_at.is_some() || self.client.try_disconnect().is_err() {
            return;
        }
        // Messages still arriving are left unacknowledged, for the next session.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while self.poller.next().await.is_ok() {}
        })
        .await;
    }
}

/// Whether a SUBACK refused any of the filters.
pub fn any_refused(codes: &[Result<QoS, Reason>]) -> bool {
    codes.iter().any(Result::is_err)
}

/// The broker's answer to our SUBSCRIBE: a refusal is the ACL's doing.
fn check_suback(
    filters: &[(String, QoS)],
    codes: &[Result<QoS, Reason>],
    protocol: session::Protocol,
    identity: &dyn std::fmt::Display,
) -> Result<()> {
    let refused: Vec<String> = (filters.iter().zip(codes))
        .filter_map(|((f, _), c)| c.as_ref().err().map(|r| (f, r)))
        .map(|(f, r)| match protocol {
            // 3.1.1 has one refusal code (0x80) and no reason to name.
            session::Protocol::V311 => f.clone(),
            session::Protocol::V5 => format!("{f} ({r})"),
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    bail!(
        "the broker refused the subscription to {} for {identity}: its ACL does not let this identity read it; use an identity the ACL lets read it (e.g. the server certificate for telemetry)",
        refused.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_packet_takes_units_up_to_what_mqtt_allows() {
        assert_eq!(parse_max_packet("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_max_packet("300KB"), Ok(300_000));
        for bad in ["1GiB", "100", "lots"] {
            let e = parse_max_packet(bad).unwrap_err();
            assert!(e.starts_with(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn a_refused_filter_is_named() {
        let filters = vec![
            ("a/+".to_string(), QoS::AtLeastOnce),
            ("b/#".to_string(), QoS::AtLeastOnce),
        ];
        let ok = Ok(QoS::AtLeastOnce);
        let v5 = session::Protocol::V5;
        assert!(check_suback(&filters, &[ok.clone(), ok.clone()], v5, &"identity 'x'").is_ok());
        let denied = [ok, Err(Reason::new(0x87))];
        let err = check_suback(&filters, &denied, v5, &"identity 'x'").unwrap_err();
        assert!(err.to_string().starts_with(
            "the broker refused the subscription to b/# (0x87 not authorized) for identity 'x':"
        ));
        let err =
            check_suback(&filters, &denied, session::Protocol::V311, &"identity 'x'").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("the broker refused the subscription to b/# for identity 'x':"));
    }
}
