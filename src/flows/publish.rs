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
use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde::Serialize;

use super::{device_id, qos, validate_device_id, PubCommandArgs, PubTelemetryArgs};
use crate::clock::now_unix_nano;
use crate::mqtt::failure::describe_connect_error_as;
use crate::mqtt::poller::Poller;
use crate::mqtt::{command_topic, telemetry_topic, unique_client_id, Role};
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
    /// Extra writes of messages already written (after reconnects).
    pub resent: u64,
    pub reconnects: u64,
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
    let (topic, source) = telemetry_source(&args, &device)?;
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
    };
    publish_stream(&endpoint, &client_id, stream, source).await
}

/// The topic and the messages: mqttkit's `Telemetry` on devices/ID/telemetry,
/// or with a schema its telemetry type on its telemetry topic (`{device}` =
/// the device, other labels from --label).
fn telemetry_source(args: &PubTelemetryArgs, device: &str) -> Result<(String, Source)> {
    let Some(schema) = super::raw::load_schema(&args.schema)? else {
        if !args.labels.is_empty() {
            bail!("--label: only with --schema (mqttkit's own topics have no labels)");
        }
        let dummy = DummyDevice::new(device, args.start_seq);
        return Ok((telemetry_topic(device), Source::Dummy(Box::new(dummy))));
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
    Ok((topic, Source::Generated(Box::new(generator))))
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
    let mut opts = endpoint.mqtt_options(client_id);
    opts.set_clean_session(!stream.persistent);
    // Twice our window: packet ids are never reused while still in flight.
    opts.set_inflight(stream.window.saturating_mul(2).max(2));
    // The channel never holds more than our window (plus a disconnect), so
    // handing over never waits.
    let (client, mut eventloop) = AsyncClient::new(opts, window + 8);
    if stream.qos == 2 {
        // PUBREL answers PUBREC: a small write behind an unacknowledged one,
        // which Nagle holds for the peer's delayed ACK (5.5 s for 2,000 lines).
        eventloop.network_options.set_tcp_nodelay(true);
    }
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
    crate::note!(
        "{}: sent {}, acked {}{}, unacked {}, unsent {}, resent {}, {} reconnects, {:.1} msg/s over {:.2} s",
        stream.label,
        summary.sent,
        summary.acked,
        qos_note,
        summary.unacked,
        summary.unsent,
        summary.resent,
        summary.reconnects,
        summary.rate_msg_s,
        elapsed
    );
    if stream.json {
        crate::output::print_json(&summary)?;
    }
    if let End::Failed(e) = end {
        return Err(e);
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
    client: AsyncClient,
    /// Cancel-safe: the select loop below interrupts polls all the time.
    poller: Poller,
    topic: String,
    qos: QoS,
    retain: bool,
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
        self.client
            .publish_bytes(self.topic.clone(), self.qos, self.retain, payload.clone())
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

    async fn on_event(&mut self, ev: Result<Event, rumqttc::ConnectionError>) -> Result<()> {
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                self.reconnect.connected();
                self.connected = true;
                if !ack.session_present {
                    self.session_lost().await?;
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => self.written(pkid),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => self.pubacked(ack.pkid),
            Ok(Event::Incoming(Incoming::PubComp(comp))) => self.pubacked(comp.pkid),
            Ok(_) => {}
            Err(e) => {
                self.connected = false;
                // rumqttc queues an Outgoing::Publish event before flushing and
                // keeps what it queued when the flush fails, handing it out after
                // the next CONNACK, when `session_lost` may already have re-handed
                // the messages: every later pkid would then map to the wrong seq.
                // Account for those events now, in order, on this connection.
                let stale: Vec<Event> = self
                    .poller
                    .eventloop_mut()
                    .map(|el| el.state.events.drain(..).collect())
                    .unwrap_or_default();
                for ev in stale {
                    match ev {
                        Event::Outgoing(Outgoing::Publish(pkid)) => self.written(pkid),
                        Event::Incoming(Incoming::PubAck(ack)) => self.pubacked(ack.pkid),
                        Event::Incoming(Incoming::PubComp(comp)) => self.pubacked(comp.pkid),
                        _ => {}
                    }
                }
                let delay = self.reconnect.failed(e)?;
                self.retry_at = Some(tokio::time::Instant::now() + delay);
            }
        }
        self.show_progress();
        Ok(())
    }

    fn pubacked(&mut self, pkid: u16) {
        if let Some(seq) = self.slots.get_mut(pkid as usize).and_then(Option::take) {
            if self.unacked.remove(&seq).is_some() {
                self.acked += 1;
            }
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
            self.client
                .publish_bytes(self.topic.clone(), self.qos, self.retain, payload)
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

/// Sends DISCONNECT after what is queued and waits (briefly) until it is written.
pub(crate) async fn disconnect(client: &AsyncClient, poller: &mut Poller) {
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
        .unwrap_or_else(|| unique_client_id("mqttkit-cmd"));
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
    let (client, eventloop) = AsyncClient::new(endpoint.mqtt_options(&client_id), 8);
    let mut poller = Poller::new(eventloop);
    client
        .publish_bytes(topic.clone(), q, false, payload)
        .await
        .context("handing the command to the MQTT event loop")?;
    let mut shutdown = Shutdown::install();
    let describe = endpoint.describe();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => bail!("interrupted before the broker acknowledged the command"),
                ev = poller.next() => match ev {
                    Ok(Event::Incoming(Incoming::PubAck(_))) if q == QoS::AtLeastOnce => return Ok(()),
                    Ok(Event::Incoming(Incoming::PubComp(_))) if q == QoS::ExactlyOnce => return Ok(()),
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if q == QoS::AtMostOnce => return Ok(()),
                    Ok(_) => {}
                    Err(e) => bail!("{}", describe_connect_error_as(&describe, &e, endpoint.password.is_some())),
                }
            }
        }
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            bail!("no acknowledgement from {describe} within 30 s for the command to {topic}")
        }
    }
    disconnect(&client, &mut poller).await;
    crate::note!("sent command '{}' (id {}) to {}", cmd.name, cmd.id, topic);
    if args.json.is_some() {
        crate::output::print_json(&SentCommand {
            topic: &topic,
            id: &cmd.id,
            device_id: &cmd.device_id,
            name: &cmd.name,
            params: &cmd.params,
            time_unix_nano: cmd.time_unix_nano,
        })?;
    } else {
        crate::output::print_stdout(&format!("{}\n", cmd.id))?;
    }
    Ok(ExitCode::SUCCESS)
}
