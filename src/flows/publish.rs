//! Publishers: the device's telemetry stream and the server's commands.
//!
//! QoS 1 bookkeeping for telemetry. rumqttc numbers packets itself and only
//! reports `Outgoing::Publish(pkid)` when it writes one, so we mirror it:
//! `fifo` holds the seqs handed to rumqttc and not yet written (it writes in
//! order), `slots[pkid]` the seq written under that packet id, `unacked` the
//! payload of every seq handed over and not yet PUBACKed. A PUBACK frees the
//! slot and the payload. After a reconnect rumqttc re-sends what it still
//! holds when the broker kept our session; when the broker lost it (it was
//! restarted without persistence) rumqttc drops those, so we hand every
//! unacked payload over again: duplicates are allowed at QoS 1, gaps are not.
//! QoS 2 is the same bookkeeping with PUBCOMP in the place of PUBACK: a
//! message counts as delivered only once the broker completed it.
//!
//! The same publisher sends raw payloads (`pub -t TOPIC -m/-l/-f/-n`): the
//! readings come from a [`Source`] instead of the dummy device, and `-l`
//! lines are handed over as they arrive, a window at a time.

use std::collections::{BTreeMap, VecDeque};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use prost::Message;
use rumqttc::QoS;
use serde::Serialize;

use super::reply::{ReplyJson, ReplyWait};
use super::{device_id, qos, validate_device_id, PubCommandArgs, PubTelemetryArgs};
use crate::clock::now_unix_nano;
use crate::mqtt::failure::describe_connect_error_as;
use crate::mqtt::poller::Poller;
use crate::mqtt::{
    command_topic, session, telemetry_topic, Ack, Client, Event, Options, Props, Protocol, Reason,
    Role,
};
use crate::pipeline::{Reconnect, Shutdown};
use crate::proto::Command;
use crate::schema::generate::Generator;
use crate::schema::{Labels, Role as SchemaRole};
use crate::telemetry::dummy::DummyDevice;

/// How long Ctrl-C waits for the PUBACKs of messages already written.
const DRAIN_ON_STOP: Duration = Duration::from_secs(5);

struct Entry {
    payload: Bytes,
    written: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PubSummary {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    pub topic: String,
    pub qos: u8,
    /// Distinct messages written to the broker at least once.
    pub sent: u64,
    /// Distinct messages the broker acknowledged (PUBACK at QoS 1, PUBCOMP at QoS 2).
    pub acked: u64,
    /// Written but never acknowledged.
    pub unacked: u64,
    /// Taken but never written (Ctrl-C or give-up while queued).
    pub unsent: u64,
    /// Acknowledged with a failure reason code (MQTT 5: e.g. 0x87 not
    /// authorized): the broker did not take them.
    pub failed: u64,
    /// Acknowledged with 0x10 "no matching subscribers" (taken, delivered to nobody).
    pub no_subscribers: u64,
    /// The first failure: topic and reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Extra writes of messages already written (after reconnects).
    pub resent: u64,
    pub reconnects: u64,
    /// `5` or `311`: what the connection spoke (3.1.1 acknowledgements do
    /// not prove authorization).
    pub protocol: Protocol,
    pub elapsed_s: f64,
    /// Acknowledged (QoS 1) or sent (QoS 0) messages per second.
    pub rate_msg_s: f64,
    pub interrupted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

enum End {
    Done,
    Interrupted,
    Failed(anyhow::Error),
}

pub async fn run(command: super::PubCommand) -> Result<ExitCode> {
    match command {
        super::PubCommand::Telemetry(a) => run_telemetry(a).await,
        super::PubCommand::Command(a) => run_command(a).await,
    }
}

pub async fn run_telemetry(args: PubTelemetryArgs) -> Result<ExitCode> {
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!(
                "--rate {rate}: must be a positive number of messages per second, e.g. --rate 1000"
            );
        }
    }
    if args.max_queued == 0 {
        bail!("--max-queued 0: must be at least 1");
    }
    let device = device_id(&args.conn, args.device_id.as_deref())?;
    let (topic, source, message_type) = telemetry_source(&args, &device)?;
    let endpoint = args.conn.spec()?.resolve(Role::Device(&device))?;
    // A fixed client id and a kept session, so the broker resumes our packet
    // ids after a reconnect.
    let client_id = endpoint.client_id.clone().unwrap_or_else(|| device.clone());
    let stream = Stream {
        topic,
        qos: args.qos,
        retain: args.retain,
        window: window(args.window, args.qos),
        max_queued: args.max_queued,
        count: args.count,
        rate: args.rate,
        reconnect_timeout: args.reconnect_timeout,
        persistent: true,
        json: args.json,
        label: format!("pub telemetry {device}"),
        device_id: device.clone(),
        props: args
            .props
            .resolve(args.conn.protocol, Some(&message_type))?,
    };
    publish_stream(&endpoint, &client_id, stream, source).await
}

/// The topic and the messages: mqttkit's `Telemetry` on devices/ID/telemetry,
/// or with a schema its telemetry type on its telemetry topic (`{device}` =
/// the device, other labels from --label).
/// Also the full name of the message type (for the content type).
fn telemetry_source(args: &PubTelemetryArgs, device: &str) -> Result<(String, Source, String)> {
    let Some(schema) = super::raw::load_schema(&args.schema)? else {
        if !args.labels.is_empty() {
            bail!("--label: only with --schema (mqttkit's own topics have no labels)");
        }
        let dummy = DummyDevice::new(device, args.start_seq);
        let name = crate::proto::TELEMETRY_TYPE.to_string();
        return Ok((
            telemetry_topic(device),
            Source::Dummy(Box::new(dummy)),
            name,
        ));
    };
    let rule = match schema.rule_of(SchemaRole::Telemetry) {
        Some(rule) => rule,
        // The one-off form (--proto --message): that type on devices/ID/telemetry.
        None if args.schema.message_type.is_some() => &schema.rules[0],
        None => bail!("--schema: no [[topic]] has role = \"telemetry\"; mark the device's telemetry topic with it"),
    };
    let topic = if rule.role.is_some() {
        let mut labels: Labels = args.labels.iter().cloned().collect();
        labels.insert(
            crate::schema::template::DEVICE.to_string(),
            device.to_string(),
        );
        rule.template.topic(&labels)?
    } else {
        telemetry_topic(device)
    };
    let generator = Generator::new(rule, device, args.start_seq);
    let name = rule.message.full_name().to_string();
    Ok((topic, Source::Generated(Box::new(generator)), name))
}

/// The in-flight window: `--window`, else 256, but [`QOS2_WINDOW`] at QoS 2.
/// mosquitto holds an incoming QoS 2 message until its PUBREL and takes at
/// most `max_inflight_messages` (20 by default) of them; past that it answers
/// an MQTT 3.1.1 client with a PUBREC as usual, completes the exchange, and
/// drops the message (measured: 219 of 2,000 arrived with a window of 256).
pub(crate) fn window(flag: Option<u16>, qos: u8) -> u16 {
    flag.unwrap_or(if qos == 2 { QOS2_WINDOW } else { 256 })
}

/// Under mosquitto's default of 20 with a margin (a broker configured with
/// fewer still drops: raise its max_inflight_messages or lower --window).
pub(crate) const QOS2_WINDOW: u16 = 16;

/// What to publish and how, for [`publish_stream`].
pub(crate) struct Stream {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub window: u16,
    pub max_queued: usize,
    pub count: Option<u64>,
    pub rate: Option<f64>,
    pub reconnect_timeout: Duration,
    /// Clean session off (a fixed client id): the broker resumes packet ids.
    pub persistent: bool,
    pub json: bool,
    /// How the summary line starts: `pub telemetry ID`, `pub TOPIC`.
    pub label: String,
    pub device_id: String,
    /// MQTT 5 properties of every message (none: `None`).
    pub props: Option<Props>,
}

/// Where the messages come from.
pub(crate) enum Source {
    /// The dummy device's readings, as fast or as often as asked.
    Dummy(Box<DummyDevice>),
    /// Messages of the user's telemetry type (`--schema`), likewise.
    Generated(Box<Generator>),
    /// Raw payloads from a reader, in chunks (`-l`: the lines read so far,
    /// so one wakeup brings many; `-m`, `-f`, `-n`: one message); `next`
    /// holds what was received and not yet taken.
    Raw {
        rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
        next: VecDeque<Bytes>,
        ended: bool,
    },
}

impl Source {
    pub(crate) fn raw(rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>) -> Self {
        Source::Raw {
            rx,
            next: VecDeque::new(),
            ended: false,
        }
    }

    fn more(&self) -> bool {
        match self {
            Source::Dummy(_) | Source::Generated(_) => true,
            Source::Raw { next, ended, .. } => !next.is_empty() || !ended,
        }
    }

    /// The next payload if one is ready now (`None`: wait or end).
    fn take(&mut self) -> Option<Bytes> {
        match self {
            Source::Dummy(d) => Some(d.next_payload().1),
            Source::Generated(g) => Some(g.next_payload(crate::clock::now_unix_nano()).1),
            Source::Raw { rx, next, ended } => next.pop_front().or_else(|| match rx.try_recv() {
                Ok(chunk) => {
                    next.extend(chunk);
                    next.pop_front()
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    *ended = true;
                    None
                }
            }),
        }
    }

    /// Waits for the reader's next payload (Raw with nothing held only).
    async fn wait(&mut self) {
        if let Source::Raw { rx, next, ended } = self {
            match rx.recv().await {
                Some(chunk) => next.extend(chunk),
                None => *ended = true,
            }
        }
    }

    fn waiting(&self) -> bool {
        matches!(self, Source::Raw { next, ended: false, .. } if next.is_empty())
    }
}

/// Publishes `source` to `stream.topic` on `endpoint`, prints the summary
/// and says by the exit code whether every message was acknowledged.
pub(crate) async fn publish_stream(
    endpoint: &crate::mqtt::Endpoint,
    client_id: &str,
    stream: Stream,
    source: Source,
) -> Result<ExitCode> {
    let window = stream.window as usize;
    let opts = Options {
        persistent: stream.persistent,
        // Twice our window: packet ids are never reused while still in flight.
        inflight: Some(stream.window.saturating_mul(2).max(2)),
        // The channel never holds more than our window (plus a disconnect),
        // so handing over never waits.
        channel: window + 8,
        // PUBREL answers PUBREC: a small write behind an unacknowledged one,
        // which Nagle holds for the peer's delayed ACK (5.5 s for 2,000 lines).
        nodelay: stream.qos == 2,
        ..Options::new(client_id)
    };
    let (client, eventloop) = session::open(endpoint, &opts);
    tracing::info!(
        "publishing to {} on {} as {client_id}",
        stream.topic,
        endpoint.describe()
    );
    let progress_name = match stream.device_id.as_str() {
        "" => stream.topic.clone(),
        d => d.to_string(),
    };
    let mut p = Publisher {
        client,
        poller: Poller::new(eventloop),
        topic: stream.topic.clone(),
        qos: qos(stream.qos),
        retain: stream.retain,
        props: stream.props.clone(),
        window,
        max_queued: stream.max_queued,
        count: stream.count,
        rate: stream.rate,
        source,
        taken: 0,
        backlog: VecDeque::new(),
        unacked: BTreeMap::new(),
        fifo: VecDeque::with_capacity(window),
        slots: vec![None; window * 2 + 2],
        connected: false,
        retry_at: None,
        reconnect: Reconnect::new(endpoint, Some(stream.reconnect_timeout)),
        progress: Progress::on_terminal(&progress_name),
        sent: 0,
        acked: 0,
        resent: 0,
        failed: 0,
        no_subscribers: 0,
        failure: None,
        explained_drop: false,
    };
    let started = Instant::now();
    let end = p.run(Shutdown::install(), started).await;
    if let Some(progress) = &p.progress {
        progress.bar.finish_and_clear();
    }
    report(&p, &stream, end, started.elapsed().as_secs_f64())
}

/// The summary line (and `--json`), and the exit code.
fn report(p: &Publisher, stream: &Stream, end: End, elapsed: f64) -> Result<ExitCode> {
    let mut summary = summarize(p, stream, &end, elapsed);
    if let End::Failed(e) = &end {
        summary.error = Some(format!("{e:#}"));
        // Nothing was ever sent: the error alone says it all.
        if p.sent == 0 && p.taken == 0 {
            return Err(end_error(end));
        }
    }
    let qos_note = if p.qos == QoS::AtMostOnce {
        " (QoS 0: not acknowledged)"
    } else {
        ""
    };
    let refused = match (summary.failed, &summary.failure) {
        (0, _) => String::new(),
        (n, Some(first)) => format!(", refused {n} ({first})"),
        (n, None) => format!(", refused {n}"),
    };
    let nobody = match summary.no_subscribers {
        0 => String::new(),
        n => format!("; {n} acked as 0x10 no matching subscribers"),
    };
    crate::note!(
        "{}: sent {}, acked {}{}{}, unacked {}, unsent {}, resent {}, {} reconnects, {:.1} msg/s over {:.2} s{}",
        stream.label,
        summary.sent,
        summary.acked,
        qos_note,
        refused,
        summary.unacked,
        summary.unsent,
        summary.resent,
        summary.reconnects,
        summary.rate_msg_s,
        elapsed,
        nobody
    );
    if summary.protocol == Protocol::V311 && p.qos != QoS::AtMostOnce && summary.acked > 0 {
        note_311_acks();
    }
    if stream.json {
        crate::output::print_json(&summary)?;
    }
    if let End::Failed(e) = end {
        return Err(e);
    }
    if summary.failed > 0 {
        crate::note!(
            "error: the broker refused {} message(s): {}",
            summary.failed,
            summary.failure.as_deref().unwrap_or("no reason given")
        );
        return Ok(ExitCode::FAILURE);
    }
    if summary.unacked > 0 || summary.unsent > 0 {
        crate::note!(
            "error: {} message(s) were not acknowledged by the broker",
            summary.unacked + summary.unsent
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The counts of a run, as the summary line and `--json` show them.
fn summarize(p: &Publisher, stream: &Stream, end: &End, elapsed: f64) -> PubSummary {
    let unacked = if p.qos == QoS::AtMostOnce {
        0
    } else {
        p.unacked.values().filter(|e| e.written).count() as u64
    };
    let unsent = p.backlog.len() as u64
        + if p.qos == QoS::AtMostOnce {
            p.fifo.len() as u64
        } else {
            p.unacked.values().filter(|e| !e.written).count() as u64
        };
    let delivered = if p.qos == QoS::AtMostOnce {
        p.sent
    } else {
        p.acked
    };
    PubSummary {
        device_id: stream.device_id.clone(),
        topic: p.topic.clone(),
        qos: stream.qos,
        sent: p.sent,
        acked: p.acked,
        unacked,
        unsent,
        resent: p.resent,
        failed: p.failed,
        no_subscribers: p.no_subscribers,
        failure: p.failure.clone(),
        protocol: p.client.protocol(),
        reconnects: p.reconnect.reconnects,
        elapsed_s: (elapsed * 1000.0).round() / 1000.0,
        rate_msg_s: if elapsed > 0.0 {
            (delivered as f64 / elapsed * 10.0).round() / 10.0
        } else {
            0.0
        },
        interrupted: matches!(end, End::Interrupted),
        error: None,
    }
}

fn end_error(end: End) -> anyhow::Error {
    match end {
        End::Failed(e) => e,
        _ => anyhow::anyhow!("unexpected end"),
    }
}

struct Publisher {
    client: Client,
    /// Cancel-safe: the select loop below interrupts polls all the time.
    poller: Poller,
    topic: String,
    qos: QoS,
    retain: bool,
    props: Option<Props>,
    window: usize,
    max_queued: usize,
    count: Option<u64>,
    rate: Option<f64>,
    source: Source,
    /// Readings taken so far (whether or not written yet).
    taken: u64,
    /// Readings taken on schedule but not yet handed to rumqttc.
    backlog: VecDeque<(u64, Bytes)>,
    unacked: BTreeMap<u64, Entry>,
    fifo: VecDeque<u64>,
    slots: Vec<Option<u64>>,
    connected: bool,
    retry_at: Option<tokio::time::Instant>,
    reconnect: Reconnect,
    sent: u64,
    acked: u64,
    resent: u64,
    failed: u64,
    no_subscribers: u64,
    failure: Option<String>,
    explained_drop: bool,
    /// A live line on stderr when it is a terminal.
    progress: Option<Progress>,
}

struct Progress {
    bar: indicatif::ProgressBar,
    device: String,
    next_update: Instant,
}

impl Progress {
    fn on_terminal(device: &str) -> Option<Progress> {
        crate::output::stderr_is_tty().then(|| Progress {
            bar: crate::output::spinner(format!("{device}: connecting")),
            device: device.to_string(),
            next_update: Instant::now(),
        })
    }
}

impl Publisher {
    fn more_to_take(&self) -> bool {
        self.count.is_none_or(|c| self.taken < c) && self.source.more()
    }

    fn in_flight(&self) -> usize {
        if self.qos == QoS::AtMostOnce {
            self.fifo.len()
        } else {
            self.unacked.len()
        }
    }

    fn finished(&self) -> bool {
        !self.more_to_take() && self.backlog.is_empty() && self.in_flight() == 0
    }

    fn due(&self, start: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let rate = self.rate?;
        Some(start + Duration::from_secs_f64(self.taken as f64 / rate))
    }

    /// The next message and its number, if the source has one ready.
    fn take_reading(&mut self) -> Option<(u64, Bytes)> {
        let payload = self.source.take()?;
        self.taken += 1;
        Some((self.taken, payload))
    }

    /// Takes the readings that are due (rate mode), up to the queue bound.
    fn take_due(&mut self, start: tokio::time::Instant) {
        let now = tokio::time::Instant::now();
        while self.more_to_take() && self.backlog.len() < self.max_queued {
            match self.due(start) {
                Some(due) if due <= now => match self.take_reading() {
                    Some(r) => self.backlog.push_back(r),
                    None => break,
                },
                _ => break,
            }
        }
    }

    async fn hand_over(&mut self, seq: u64, payload: Bytes) -> Result<()> {
        let props = self.props.as_ref();
        (self
            .client
            .publish(&self.topic, self.qos, self.retain, payload.clone(), props))
        .await
        .context("handing a message to the MQTT event loop")?;
        self.fifo.push_back(seq);
        if self.qos != QoS::AtMostOnce {
            self.unacked.insert(
                seq,
                Entry {
                    payload,
                    written: false,
                },
            );
        }
        Ok(())
    }

    /// Hands messages to rumqttc while connected and the window has room.
    async fn fill_window(&mut self) -> Result<()> {
        // Unthrottled at QoS 1, top up a quarter of the window at a time:
        // PUBACKs arrive one by one, and a message handed over per PUBACK
        // would cost a TLS record and a write each (for the broker, a wakeup
        // and two reads each); a quarter is written in one flush.
        // At QoS 2 each completion is topped up at once: waiting for a
        // quarter leaves the socket idle, the broker's small PUBCOMPs then
        // wait behind our delayed ACKs (2,000 lines: 5.9 s instead of 0.5 s).
        if self.rate.is_none()
            && self.qos == QoS::AtLeastOnce
            && self.in_flight() > self.window - self.window / 4
        {
            return Ok(());
        }
        while self.connected && self.in_flight() < self.window {
            let (seq, payload) = if let Some(r) = self.backlog.pop_front() {
                r
            } else if self.rate.is_none() && self.more_to_take() {
                match self.take_reading() {
                    Some(r) => r,
                    None => break,
                }
            } else {
                break;
            };
            self.hand_over(seq, payload).await?;
        }
        Ok(())
    }

    async fn run(&mut self, mut shutdown: Shutdown, started: Instant) -> End {
        let start = tokio::time::Instant::from_std(started);
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        // Disabled timer branches still build their future: no clock read per message.
        let far = far_future();
        let end = loop {
            if stop_deadline.is_none() {
                if self.rate.is_some() {
                    self.take_due(start);
                }
                if let Err(e) = self.fill_window().await {
                    break End::Failed(e);
                }
            }
            if self.finished() || (stop_deadline.is_some() && self.in_flight() == 0) {
                break if stop_deadline.is_some() {
                    End::Interrupted
                } else {
                    End::Done
                };
            }
            // Waking for the rate schedule interrupts the poll (even a TLS
            // handshake); the Poller resumes it, so readings keep being taken
            // on time while connecting too.
            let next_due = if stop_deadline.is_none()
                && self.more_to_take()
                && self.backlog.len() < self.max_queued
            {
                self.due(start)
            } else {
                None
            };
            tokio::select! {
                biased;
                _ = shutdown.wait(), if stop_deadline.is_none() => {
                    crate::note!("stopping: waiting up to {} s for outstanding acknowledgements", DRAIN_ON_STOP.as_secs());
                    stop_deadline = Some(tokio::time::Instant::now() + DRAIN_ON_STOP);
                    if !self.connected { break End::Interrupted; }
                }
                _ = tokio::time::sleep_until(stop_deadline.unwrap_or(far)), if stop_deadline.is_some() => {
                    break End::Interrupted;
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or(far)), if next_due.is_some() => {}
                // A raw source with nothing ready: wait for the reader while
                // the window has room (with it full, the acks come first).
                _ = self.source.wait(), if self.source.waiting() && stop_deadline.is_none()
                    && self.connected && self.in_flight() < self.window => {}
                _ = tokio::time::sleep_until(self.retry_at.unwrap_or(far)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                }
                ev = self.poller.next(), if self.retry_at.is_none() => {
                    if let Err(e) = self.on_event(ev).await {
                        break End::Failed(e);
                    }
                }
            }
        };
        if self.connected {
            disconnect(&self.client, &mut self.poller).await;
        }
        end
    }

    /// At most ten updates a second, whatever the message rate.
    fn show_progress(&mut self) {
        let Some(next_update) = self.progress.as_ref().map(|p| p.next_update) else {
            return;
        };
        let now = Instant::now();
        if now < next_update {
            return;
        }
        let state = if self.connected { "" } else { ", reconnecting" };
        let counts = format!(
            "sent {}, acked {}, in flight {}{state}",
            self.sent,
            self.acked,
            self.in_flight()
        );
        if let Some(progress) = &mut self.progress {
            progress.next_update = now + Duration::from_millis(100);
            progress
                .bar
                .set_message(format!("{}: {counts}", progress.device));
        }
    }

    async fn on_event(&mut self, ev: Result<Event, crate::mqtt::ConnError>) -> Result<()> {
        match ev {
            Ok(Event::Connected { session_present }) => {
                self.reconnect.connected();
                self.connected = true;
                if !session_present {
                    self.session_lost().await?;
                }
            }
            Ok(ev) => self.account(ev),
            Err(e) => {
                self.connected = false;
                self.explain_drop(&e);
                // rumqttc queues a Sent event before flushing and keeps what
                // it queued when the flush fails, handing it out after the
                // next CONNACK, when `session_lost` may already have re-handed
                // the messages: every later pkid would then map to the wrong
                // seq. Account for those events now, in order, on this connection.
                let stale = (self.poller.eventloop_mut())
                    .map(|el| el.drain_buffered())
                    .unwrap_or_default();
                for ev in stale {
                    self.account(ev);
                }
                let delay = self.reconnect.failed(e)?;
                self.retry_at = Some(tokio::time::Instant::now() + delay);
            }
        }
        self.show_progress();
        Ok(())
    }

    /// A broker that ends the connection right after our first publishes,
    /// none acknowledged: MQTT 5 says why (DISCONNECT reason, shown by the
    /// reconnect notes); over 3.1.1 it is the usual sign of an AWS IoT
    /// policy that denies the topic. Said once.
    fn explain_drop(&mut self, e: &crate::mqtt::ConnError) {
        let dropped_on_publish = self.sent > 0 && self.acked == 0 && self.failed == 0;
        if !dropped_on_publish || e.server_disconnect().is_some() || self.explained_drop {
            return;
        }
        self.explained_drop = true;
        if self.client.protocol() == Protocol::V311 {
            crate::note!("note: the broker closed the connection right after a publish to {} and acknowledged nothing: over MQTT 3.1.1 that is how AWS IoT Core refuses a topic its policy denies (check iot:Publish for it), or how a broker refuses a packet it cannot take", self.topic);
        }
    }

    /// Writes and acknowledgements: the bookkeeping of the module doc.
    fn account(&mut self, ev: Event) {
        match ev {
            Event::Sent(pkid) => self.written(pkid),
            Event::PubAck(ack) | Event::PubComp(ack) => self.pubacked(ack),
            // A failed PUBREC ends a QoS 2 exchange: no PUBCOMP follows.
            Event::PubRec(ack) if !ack.reason.is_success() => self.pubacked(ack),
            _ => {}
        }
    }

    /// An acknowledgement ends a message: taken (counted as acked), or
    /// refused by its reason code (counted as failed, never retried: the
    /// broker would refuse it again).
    fn pubacked(&mut self, ack: Ack) {
        let Some(seq) = self.slots.get_mut(ack.pkid as usize).and_then(Option::take) else {
            return;
        };
        if self.unacked.remove(&seq).is_none() {
            return;
        }
        if ack.reason.is_success() {
            self.acked += 1;
            if ack.reason.code == Reason::NO_MATCHING_SUBSCRIBERS {
                self.no_subscribers += 1;
            }
            return;
        }
        self.failed += 1;
        if self.failure.is_none() {
            self.failure = Some(format!("{}: {}", self.topic, ack.reason));
        }
    }

    fn written(&mut self, pkid: u16) {
        if self.qos == QoS::AtMostOnce {
            if self.fifo.pop_front().is_some() {
                self.sent += 1;
            }
            return;
        }
        let Some(slot) = self.slots.get_mut(pkid as usize) else {
            return;
        };
        if slot.is_some() {
            // rumqttc re-sending what the resumed session still owed.
            self.resent += 1;
            return;
        }
        let Some(seq) = self.fifo.pop_front() else {
            return;
        };
        *slot = Some(seq);
        if let Some(e) = self.unacked.get_mut(&seq) {
            if e.written {
                self.resent += 1;
            } else {
                e.written = true;
                self.sent += 1;
            }
        }
    }

    /// The broker has no session for us: rumqttc dropped what it held.
    async fn session_lost(&mut self) -> Result<()> {
        self.slots.fill(None);
        self.fifo.clear();
        if self.qos == QoS::AtMostOnce || self.unacked.is_empty() {
            return Ok(());
        }
        let again: Vec<(u64, Bytes)> = self
            .unacked
            .iter()
            .map(|(s, e)| (*s, e.payload.clone()))
            .collect();
        crate::note!(
            "the broker kept no session; re-sending {} unacknowledged message(s)",
            again.len()
        );
        for (seq, payload) in again {
            let props = self.props.as_ref();
            (self
                .client
                .publish(&self.topic, self.qos, self.retain, payload, props))
            .await
            .context("handing a message to the MQTT event loop")?;
            self.fifo.push_back(seq);
        }
        Ok(())
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

/// The broker's answer to the one publish of `pub command`: its reason
/// (success at QoS 0 once written), or why there was none within 30 s;
/// with the messages that arrived meanwhile (an early reply).
async fn await_ack(
    poller: &mut Poller,
    q: QoS,
    endpoint: &crate::mqtt::Endpoint,
) -> Result<(Reason, Vec<crate::mqtt::Message>)> {
    let describe = endpoint.describe();
    let mut shutdown = Shutdown::install();
    let mut early = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => bail!("interrupted before the broker acknowledged the command"),
                ev = poller.next() => match ev {
                    Ok(Event::PubAck(a)) if q == QoS::AtLeastOnce => return Ok(a.reason),
                    Ok(Event::PubRec(a)) if q == QoS::ExactlyOnce && !a.reason.is_success() => return Ok(a.reason),
                    Ok(Event::PubComp(a)) if q == QoS::ExactlyOnce => return Ok(a.reason),
                    Ok(Event::Sent(_)) if q == QoS::AtMostOnce => return Ok(Reason::SUCCESS),
                    Ok(Event::Message(m)) => early.push(m),
                    Ok(_) => {}
                    Err(e) => bail!("{}", describe_connect_error_as(&describe, &e, endpoint.password.is_some())),
                }
            }
        }
    })
    .await;
    let reason = done.unwrap_or_else(|_| {
        bail!("no acknowledgement from {describe} within 30 s for the command")
    })?;
    Ok((reason, early))
}

/// Over 3.1.1 a broker acknowledges what its ACL drops: say so (once).
pub(crate) fn note_311_acks() {
    crate::note!("note: MQTT 3.1.1 acknowledgements do not prove authorization (mosquitto acknowledges what its ACL drops); MQTT 5 (-V 5, the default) reports refusals");
}

/// Sends DISCONNECT after what is queued and waits (briefly) until it is written.
pub(crate) async fn disconnect(client: &Client, poller: &mut Poller) {
    poller.disconnect(client, Duration::from_secs(2)).await;
}

/// `--name` of mqttkit's own Command; the schema flags have no place here.
fn builtin_command_name(args: &PubCommandArgs) -> Result<String> {
    if let Some(Some(_)) = &args.json {
        bail!("--json JSON: a command body needs --schema F (your command type); mqttkit's Command takes --name and --param, and a bare --json prints it");
    }
    if !args.labels.is_empty() {
        bail!("--label: only with --schema (mqttkit's own topics have no labels)");
    }
    match args.name.as_deref() {
        None => bail!("--name: missing; e.g. --name reboot (or with --schema F your command as --json '{{...}}')"),
        Some("") => bail!("--name: must not be empty; e.g. --name reboot"),
        Some(name) => Ok(name.to_string()),
    }
}

#[derive(Serialize)]
struct SentCommand<'a> {
    topic: &'a str,
    id: &'a str,
    device_id: &'a str,
    name: &'a str,
    params: &'a BTreeMap<String, String>,
    time_unix_nano: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<ReplyJson>,
}

pub async fn run_command(args: PubCommandArgs) -> Result<ExitCode> {
    if let Some(schema) = super::raw::load_schema(&args.schema)? {
        return super::schema_command::publish(args, schema).await;
    }
    validate_device_id(&args.device_id)?;
    let name = builtin_command_name(&args)?;
    let endpoint = args.conn.spec()?.resolve(Role::Server)?;
    let client_id = endpoint
        .client_id
        .clone()
        .unwrap_or_else(|| crate::mqtt::client_id::unique_within(&endpoint, "mqttkit-cmd"));
    let topic = command_topic(&args.device_id);
    let cmd = Command {
        id: super::new_uuid(),
        device_id: args.device_id.clone(),
        name,
        params: args.params.iter().cloned().collect(),
        time_unix_nano: now_unix_nano(),
    };
    let payload = Bytes::from(cmd.encode_to_vec());
    let q = qos(args.qos);
    let mut props = args
        .props
        .resolve(args.conn.protocol, Some(crate::proto::COMMAND_TYPE))?;
    let wait = match args.wait_reply {
        Some(t) => Some(ReplyWait::new(&endpoint, &args.device_id, &cmd.id, t)?),
        None => None,
    };
    if let Some(w) = &wait {
        w.ask(&mut props);
    }
    let (client, eventloop) = session::open(&endpoint, &Options::new(&client_id));
    let mut poller = Poller::new(eventloop);
    if let Some(w) = &wait {
        w.subscribe(&client, &mut poller).await?;
    }
    (client.publish(&topic, q, false, payload, props.as_ref()))
        .await
        .context("handing the command to the MQTT event loop")?;
    let describe = endpoint.describe();
    let (reason, early) = await_ack(&mut poller, q, &endpoint).await?;
    if !reason.is_success() {
        disconnect(&client, &mut poller).await;
        bail!("{describe}: the broker refused the command to {topic}: {reason}; check that this identity may publish there (the server identity, `mqttkit doctor`)")
    }
    if client.protocol() == Protocol::V311 && q != QoS::AtMostOnce {
        note_311_acks();
    }
    crate::note!("sent command '{}' (id {}) to {}", cmd.name, cmd.id, topic);
    let reply = match &wait {
        Some(w) => Some(w.wait(&mut poller, early).await),
        None => None,
    };
    disconnect(&client, &mut poller).await;
    let reply = reply.transpose()?;
    print_sent(&args, &topic, &cmd, reply)
}

/// The sent command (its id, or `--json`) and the reply, on stdout; a
/// reply that says the device did not take it exits 1.
fn print_sent(
    args: &PubCommandArgs,
    topic: &str,
    cmd: &Command,
    reply: Option<crate::proto::CommandReply>,
) -> Result<ExitCode> {
    let ok = reply.as_ref().is_none_or(|r| r.ok);
    if args.json.is_some() {
        crate::output::print_json(&SentCommand {
            topic,
            id: &cmd.id,
            device_id: &cmd.device_id,
            name: &cmd.name,
            params: &cmd.params,
            time_unix_nano: cmd.time_unix_nano,
            reply: reply.map(ReplyJson::from),
        })?;
    } else if let Some(r) = reply {
        let verdict = if r.ok { "ok" } else { "refused" };
        crate::output::print_stdout(&format!(
            "{} reply from {}: {verdict}: {}\n",
            cmd.id,
            crate::telemetry::Escaped(&r.device_id),
            crate::telemetry::Escaped(&r.message)
        ))?;
    } else {
        crate::output::print_stdout(&format!("{}\n", cmd.id))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
