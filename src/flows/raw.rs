//! `mqttkit pub -t TOPIC` and `mqttkit sub -t FILTER`: raw payloads with
//! mosquitto_pub's and mosquitto_sub's flag letters, so their command lines
//! (and scripts full of them) work against any broker.
//!
//! The publisher is the telemetry publisher with another [`Source`]; the
//! subscriber is the one pipeline with a printer that writes payloads as
//! they are. At QoS 1 and 2 a message counts only once the broker
//! acknowledged it (PUBACK / PUBCOMP), and the exit status says whether all
//! were.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::mqtt::Message;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;

use super::publish::{publish_stream, Source, Stream};
use super::subscribe::{Print, Printing};
use super::{Out, SubCommonArgs};
use crate::mqtt::{device_of_topic, telemetry_topic, ConnectionArgs, Role};
use crate::pipeline::{self, Acks, Handled, Shutdown, SubscribeConfig};
use crate::schema::{codec, Labels, Schema, SchemaArgs};
use prost_reflect::MessageDescriptor;

/// mosquitto_sub's exit status when -W expired first.
pub const TIMED_OUT: u8 = 27;

/// Chunks of `-l` lines read ahead of the network, at most.
const READ_AHEAD: usize = 64;
/// Most lines in one chunk.
const CHUNK: usize = 256;

#[derive(Debug, Args)]
pub struct RawPubArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Topic to publish to.
    #[arg(long, short = 't', value_name = "TOPIC", required = true)]
    pub topic: Option<String>,
    #[command(flatten)]
    pub message: MessageArgs,
    /// QoS: 1 waits for PUBACK of every message, 2 for PUBCOMP (exactly once), 0 for nothing.
    #[arg(long, short = 'q', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Retain: the broker keeps the last message for subscribers that come later.
    #[arg(long, short = 'r')]
    pub retain: bool,
    /// Most messages written but not yet acknowledged at any time
    /// (default 256; 20 at QoS 2, see `publish::window`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16384))]
    pub window: Option<u16>,
    /// Give up after this long without a connection: 300, 30s, 5m (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_duration)]
    pub reconnect_timeout: Duration,
    /// With --file: send the file's bytes as they are, even on a topic the
    /// schema maps (else the file is JSON lines, one message each).
    #[arg(long, requires = "file")]
    pub raw: bool,
    #[command(flatten)]
    pub schema: SchemaArgs,
    #[command(flatten)]
    pub props: super::props::PropsArgs,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json_summary: bool,
}

/// Exactly one message source, as mosquitto_pub takes it.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct MessageArgs {
    /// One message with this payload, as it is (mosquitto_pub's -m; its
    /// long form is --text here: --message names a protobuf type).
    #[arg(long = "text", short = 'm', value_name = "TEXT")]
    pub message: Option<String>,
    /// One message: this JSON object encoded as the type the schema maps to
    /// the topic (canonical proto3 JSON; unknown fields are errors).
    #[arg(long, value_name = "JSON")]
    pub json: Option<String>,
    /// Each line of stdin is one message, sent as it is read, until end of input.
    #[arg(long = "stdin-line", short = 'l')]
    pub lines: bool,
    /// One message: the whole file.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// One empty message.
    #[arg(long = "null-message", short = 'n')]
    pub null: bool,
}

#[derive(Debug, Args)]
pub struct RawSubArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Topic filter to subscribe to (`+` one level, `#` the rest); repeatable.
    #[arg(long = "topic", short = 't', value_name = "FILTER", required = true)]
    pub filters: Vec<String>,
    /// Print the topic before each payload: `TOPIC PAYLOAD`.
    #[arg(short = 'v', long = "print-topic")]
    pub print_topic: bool,
    /// How to print payloads: json (one object per message: topic, labels,
    /// type, message decoded by the schema; the default with a schema),
    /// text (as they are; the default without), hex, base64. A payload that
    /// does not decode is printed as hex with the error, never dropped.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub schema: SchemaArgs,
    #[command(flatten)]
    pub common: SubCommonArgs,
}

pub async fn run_pub(args: RawPubArgs) -> Result<ExitCode> {
    let Some(topic) = args.topic.clone() else {
        bail!("-t TOPIC: missing; e.g. mqttkit pub -t sensors/1 -m hello");
    };
    if topic.is_empty() || topic.contains(['+', '#']) {
        bail!("-t {topic}: a topic to publish to must be non-empty and hold no '+' or '#'");
    }
    if args.message.lines && args.conn.password_stdin {
        bail!("--password-stdin: stdin carries the lines of -l; pass the password in MQTTKIT_PASSWORD instead");
    }
    let schema = load_schema(&args.schema)?;
    let desc = (schema.as_ref())
        .and_then(|s| s.rule_for(&topic))
        .map(|(rule, _)| rule.message.clone());
    let input = Input {
        desc: desc.filter(|_| !args.raw),
        failed: Arc::new(AtomicBool::new(false)),
    };
    if args.message.json.is_some() && input.desc.is_none() {
        bail!("--json: no message type for topic {topic}; map it in --schema (or give --proto FILE --message TYPE), or send bytes with -m");
    }
    // Protobuf (encoded from JSON by the map) says so in its content type.
    let protobuf_type = (input.desc.as_ref())
        .filter(|_| {
            args.message.json.is_some() || args.message.file.is_some() || args.message.lines
        })
        .map(|d| d.full_name().to_string());
    let source = Source::raw(read_messages(&args.message, &input)?);
    // A device's telemetry topic is written as that device (mqttkit's broker
    // ACL drops it from any other identity, silently); the rest as the server.
    // An identity given with --cert is used as it is: the broker says
    // (MQTT 5: PUBACK 0x87) whether it may publish there.
    let role = match device_of_topic(&topic) {
        Some(id) if topic == telemetry_topic(id) && args.conn.cert.is_none() => Role::Device(id),
        _ => Role::Server,
    };
    let endpoint = args.conn.spec()?.resolve(role)?;
    let client_id = endpoint.client_id.clone();
    let stream = Stream {
        label: format!("pub {topic}"),
        topic,
        qos: args.qos,
        retain: args.retain,
        window: super::publish::window(args.window, args.qos),
        max_queued: 1,
        count: None,
        rate: None,
        reconnect_timeout: args.reconnect_timeout,
        // A chosen client id resumes its session after a reconnect.
        persistent: client_id.is_some(),
        json: args.json_summary,
        device_id: String::new(),
        props: args
            .props
            .resolve(args.conn.protocol, protobuf_type.as_deref())?,
    };
    // In the identity's namespace (`broker up` binds client ids to identities).
    let client_id = client_id
        .unwrap_or_else(|| crate::mqtt::client_id::unique_within(&endpoint, "mqttkit-pub"));
    let code = publish_stream(&endpoint, &client_id, stream, source).await?;
    if input.failed.load(Ordering::Relaxed) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}

/// The schema the flags name, if any.
pub(crate) fn load_schema(args: &SchemaArgs) -> Result<Option<Schema>> {
    let src = args.source();
    if src.is_empty() {
        if src.message.is_some() {
            bail!("--message: needs the .proto that defines it: add --proto FILE (or --descriptor-set FILE, or --schema FILE)");
        }
        return Ok(None);
    }
    Schema::load(&src).map(Some)
}

/// How input text becomes payloads: JSON encoded as `desc` when the topic
/// is mapped, else bytes as they are.
struct Input {
    desc: Option<MessageDescriptor>,
    /// Set when a line of -l did not fit (already reported): exit non-zero.
    failed: Arc<AtomicBool>,
}

impl Input {
    /// `text` as a payload; `place` names it in an error (built only then).
    fn encode(&self, text: &[u8], place: impl Fn() -> String) -> Result<Bytes> {
        let Some(desc) = &self.desc else {
            return Ok(Bytes::copy_from_slice(text));
        };
        let text = std::str::from_utf8(text)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text, so not JSON", place()))?;
        codec::encode_json(desc, text)
            .map(Bytes::from)
            .map_err(|e| anyhow::anyhow!("{}: {e}", place()))
    }
}

/// The messages of -m, -f or -n (one), or of -l (a reader thread, line by
/// line: stdin blocks, the network must not).
fn read_messages(
    m: &MessageArgs,
    input: &Input,
) -> Result<tokio::sync::mpsc::Receiver<Vec<Bytes>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let one = if let Some(text) = &m.message {
        Bytes::from(text.clone().into_bytes())
    } else if let Some(json) = &m.json {
        input.encode(json.as_bytes(), || "--json".to_string())?
    } else if let Some(path) = &m.file {
        let data = std::fs::read(path)
            .with_context(|| format!("-f {}: cannot read the file", path.display()))?;
        if input.desc.is_some() {
            // JSON lines, every one checked before anything is sent.
            let messages = json_lines(&data, path, input)?;
            std::thread::spawn(move || {
                (messages.chunks(CHUNK)).try_for_each(|c| tx.blocking_send(c.to_vec()))
            });
            return Ok(rx);
        }
        Bytes::from(data)
    } else if m.null {
        Bytes::new()
    } else {
        let input = Input {
            desc: input.desc.clone(),
            failed: input.failed.clone(),
        };
        let stdin = std::io::BufReader::with_capacity(1 << 16, std::io::stdin());
        std::thread::spawn(move || read_lines(stdin, tx, &input));
        return Ok(rx);
    };
    // The channel has room: this never fails.
    let _ = tx.try_send(vec![one]);
    Ok(rx)
}

/// The non-blank lines of a JSON-lines file, each encoded.
fn json_lines(data: &[u8], path: &std::path::Path, input: &Input) -> Result<Vec<Bytes>> {
    (data.split(|b| *b == b'\n').enumerate())
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| input.encode(l, || format!("{}:{}", path.display(), i + 1)))
        .collect()
}

/// One message per line, without its line ending, until end of input; with
/// a mapped type each line is JSON, and the first that does not fit ends
/// the input (reported, and the exit status says so).
///
/// Lines go out in chunks: what is already read when the reader would
/// block (or [`CHUNK`] lines), so an interactive line is sent at once and a
/// file costs one wakeup per chunk, not per line.
fn read_lines<R: Read>(
    mut reader: BufReader<R>,
    tx: tokio::sync::mpsc::Sender<Vec<Bytes>>,
    input: &Input,
) {
    let mut line = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut number = 0;
    loop {
        if !chunk.is_empty() && (chunk.len() >= CHUNK || reader.buffer().is_empty()) {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.blocking_send(full).is_err() {
                return;
            }
        }
        number += 1;
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if input.desc.is_some() && line.trim_ascii().is_empty() {
            continue;
        }
        match input.encode(&line, || format!("-l line {number}")) {
            Ok(m) => chunk.push(m),
            Err(e) => {
                crate::note!("error: {e:#}; nothing after it was sent");
                input.failed.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
}

pub async fn run_sub(args: RawSubArgs) -> Result<ExitCode> {
    for f in &args.filters {
        check_filter(f)?;
    }
    let schema = load_schema(&args.schema)?;
    let endpoint = args.conn.spec()?.resolve(Role::Server)?;
    let persistent = args.common.persistent;
    let client_id = match (&endpoint.client_id, persistent) {
        (Some(id), _) => id.clone(),
        (None, true) => bail!("--persistent: needs a fixed client id; pass -i CLIENT_ID"),
        (None, false) => crate::mqtt::client_id::unique_within(&endpoint, "mqttkit-sub"),
    };
    let cfg = SubscribeConfig {
        filters: args.filters.clone(),
        qos: crate::mqtt::qos(args.common.qos),
        client_id,
        persistent,
        reconnect_timeout: Some(args.common.reconnect_timeout),
        count: args.common.count,
        acks: Acks::AfterCommit,
        connect_timeout: None,
        max_packet: args.common.max_packet,
    };
    let format = match (args.format, args.common.json) {
        (Some(f), true) if f != Format::Json => {
            bail!("--json: conflicts with --format {f:?}; give one of them")
        }
        (Some(f), _) => f,
        (None, true) => Format::Json,
        (None, false) if schema.is_some() => Format::Json,
        (None, false) => Format::Text,
    };
    let printer = RawPrinter {
        print_topic: args.print_topic,
        format,
        schema,
    };
    let banner = format!(
        "subscribed to {} on {}",
        args.filters.join(", "),
        endpoint.describe()
    );
    let mut handler = Printing::new(printer, banner);
    let (shutdown, timed_out) = stop_after(args.common.timeout);
    let summary = pipeline::run(&endpoint, &cfg, shutdown, &mut handler).await?;
    crate::note!(
        "sub: {} message(s) received, {} reconnects",
        summary.counted,
        summary.reconnects
    );
    Ok(exit_status(&summary, cfg.count, &timed_out))
}

/// 0 when the run ended as asked; 27 when -W expired first, 130 for Ctrl-C
/// before --count.
pub(crate) fn exit_status(
    summary: &pipeline::Summary,
    count: Option<u64>,
    timed_out: &AtomicBool,
) -> ExitCode {
    if timed_out.load(Ordering::Relaxed) && summary.end == pipeline::End::Signal {
        crate::note!("sub: timed out (-W) before --count messages arrived");
        return ExitCode::from(TIMED_OUT);
    }
    if summary.short_of(count) {
        return ExitCode::from(130);
    }
    ExitCode::SUCCESS
}

/// A stop on Ctrl-C/SIGTERM, or after `timeout` (then the flag is set).
pub(crate) fn stop_after(timeout: Option<Duration>) -> (Shutdown, Arc<AtomicBool>) {
    let timed_out = Arc::new(AtomicBool::new(false));
    let Some(timeout) = timeout else {
        return (Shutdown::install(), timed_out);
    };
    let mut signals = Shutdown::install();
    let (trigger, shutdown) = Shutdown::manual();
    let flag = timed_out.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = signals.wait() => {}
            _ = tokio::time::sleep(timeout) => flag.store(true, Ordering::Relaxed),
        }
        trigger.stop();
        // A second Ctrl-C still reaches the loops that give up on it.
        signals.wait_beyond(signals.requests()).await;
        trigger.stop();
    });
    (shutdown, timed_out)
}

fn check_filter(f: &str) -> Result<()> {
    let levels: Vec<&str> = f.split('/').collect();
    let bad_hash = levels
        .iter()
        .enumerate()
        .any(|(i, l)| l.contains('#') && (*l != "#" || i + 1 != levels.len()));
    let bad_plus = levels.iter().any(|l| l.contains('+') && *l != "+");
    if f.is_empty() || bad_hash || bad_plus {
        bail!("-t {f}: not a topic filter; '+' must be a whole level and '#' the whole last level, e.g. sensors/+/temp or sensors/#");
    }
    Ok(())
}

/// How `sub -t` prints a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
    Hex,
    Base64,
}

/// Writes each payload like mosquitto_sub (bytes, then a newline), or as
/// JSON decoded by the schema.
pub(crate) struct RawPrinter {
    print_topic: bool,
    format: Format,
    schema: Option<Schema>,
}

impl RawPrinter {
    /// One JSON object per message, decoded by `schema` (`sub command --schema`).
    pub(crate) fn decoding(schema: Schema) -> Self {
        RawPrinter {
            print_topic: false,
            format: Format::Json,
            schema: Some(schema),
        }
    }
}

/// One message as a JSON line. `message` when the schema decoded it;
/// `payload` (UTF-8) or `payload_base64` when no type is mapped;
/// `payload_hex` and `error` when the mapped type does not decode it.
#[derive(Serialize)]
struct JsonLine<'a> {
    topic: &'a str,
    qos: u8,
    retain: bool,
    received: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Labels>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "as_json")]
    message: Option<prost_reflect::DynamicMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// MQTT 5 properties (user properties, content type, expiry...).
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a crate::mqtt::Props>,
}

fn as_json<S: serde::Serializer>(
    m: &Option<prost_reflect::DynamicMessage>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    m.as_ref().map(codec::Json).serialize(s)
}

/// What the schema made of one payload.
enum Decoded<'a> {
    Message(&'a str, Labels, prost_reflect::DynamicMessage),
    Failed(&'a str, String),
    Unmapped,
}

impl RawPrinter {
    fn decode<'a>(&'a self, p: &Message) -> Decoded<'a> {
        let Some((rule, labels)) = self.schema.as_ref().and_then(|s| s.rule_for(&p.topic)) else {
            return Decoded::Unmapped;
        };
        let name = rule.message.full_name();
        match codec::decode_message(&rule.message, &p.payload) {
            Ok(v) => Decoded::Message(name, labels, v),
            Err(e) => Decoded::Failed(name, format!("{e:#}")),
        }
    }

    fn json_line(&self, p: &Message, decoded: Decoded<'_>) -> String {
        let mut line = JsonLine {
            topic: &p.topic,
            qos: p.qos as u8,
            retain: p.retain,
            received: crate::telemetry::rfc3339_nanos(crate::clock::now_unix_nano() as i128)
                .unwrap_or_default(),
            type_name: None,
            labels: None,
            message: None,
            payload: None,
            payload_base64: None,
            payload_hex: None,
            error: None,
            properties: p.props.as_deref(),
        };
        match decoded {
            Decoded::Message(name, labels, v) => {
                line.type_name = Some(name);
                line.labels = Some(labels);
                line.message = Some(v);
            }
            Decoded::Failed(name, e) => {
                line.type_name = Some(name);
                line.payload_hex = Some(hex::encode(&p.payload));
                line.error = Some(e);
            }
            Decoded::Unmapped => match std::str::from_utf8(&p.payload) {
                Ok(text) => line.payload = Some(text),
                Err(_) => line.payload_base64 = Some(base64_of(&p.payload)),
            },
        }
        serde_json::to_string(&line).unwrap_or_default()
    }
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl Print for RawPrinter {
    fn print(&mut self, out: &mut Out, p: &Message) -> Result<Handled> {
        let decoded = self.decode(p);
        if let Decoded::Failed(_, e) = &decoded {
            crate::note!(
                "warning: {} ({} bytes): {e}; printed as hex",
                crate::telemetry::Escaped(&p.topic),
                p.payload.len()
            );
        }
        let body: Vec<u8> = match (self.format, decoded) {
            (Format::Json, d) => self.json_line(p, d).into_bytes(),
            (Format::Hex, _) => hex::encode(&p.payload).into_bytes(),
            (Format::Base64, _) => base64_of(&p.payload).into_bytes(),
            (Format::Text, Decoded::Message(_, _, v)) => serde_json::to_vec(&codec::Json(&v))?,
            (Format::Text, Decoded::Failed(..)) => hex::encode(&p.payload).into_bytes(),
            (Format::Text, Decoded::Unmapped) => p.payload.to_vec(),
        };
        let w = out.writer();
        if self.print_topic && self.format != Format::Json {
            w.write_all(p.topic.as_bytes())?;
            w.write_all(b" ")?;
        }
        w.write_all(&body)?;
        out.end_line()?;
        Ok(Handled::Counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["a", "a/+/b", "#", "a/#", "+"] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "a/b#"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_lose_their_newline_only() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let input = Input {
            desc: None,
            failed: Arc::default(),
        };
        read_lines(BufReader::new(&b"a\nb c\r\n\nlast"[..]), tx, &input);
        let got: Vec<Bytes> = std::iter::from_fn(|| rx.try_recv().ok())
            .flatten()
            .collect();
        assert_eq!(got, vec!["a", "b c\r", "", "last"]);
    }
}
