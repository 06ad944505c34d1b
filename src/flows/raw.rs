//! `mqttkit pub -t TOPIC` and `mqttkit sub -t FILTER`: raw payloads with
//! mosquitto_pub's and mosquitto_sub's flag letters, so their command lines
//! (and scripts full of them) work against any broker.
//!
//! The publisher is the telemetry publisher with another [`Source`]; the
//! subscriber is the one pipeline with a printer that writes payloads as
//! they are. At QoS 1 and 2 a message counts only once the broker
//! acknowledged it (PUBACK / PUBCOMP), and the exit status says whether all
//! were.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use rumqttc::Publish;
use serde::Serialize;

use super::publish::{publish_stream, Source, Stream};
use super::subscribe::{Print, Printing};
use super::{Out, SubCommonArgs};
use crate::mqtt::{device_of_topic, telemetry_topic, unique_client_id, ConnectionArgs, Role};
use crate::pipeline::{self, Acks, Handled, Shutdown, SubscribeConfig};

/// mosquitto_sub's exit status when -W expired first.
pub const TIMED_OUT: u8 = 27;

/// Lines of `-l` read ahead of the network, at most.
const READ_AHEAD: usize = 4096;

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
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Exactly one message source, as mosquitto_pub takes it.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct MessageArgs {
    /// One message with this payload.
    #[arg(long, short = 'm', value_name = "MESSAGE")]
    pub message: Option<String>,
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
    let source = Source::raw(read_messages(&args.message)?);
    // A device's telemetry topic is written as that device (mqttkit's broker
    // ACL drops it from any other identity, silently); the rest as the server.
    let role = match device_of_topic(&topic) {
        Some(id) if topic == telemetry_topic(id) => Role::Device(id),
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
        json: args.json,
        device_id: String::new(),
    };
    let client_id = client_id.unwrap_or_else(|| unique_client_id("mqttkit-pub"));
    publish_stream(&endpoint, &client_id, stream, source).await
}

/// The messages of -m, -f or -n (one), or of -l (a reader thread, line by
/// line: stdin blocks, the network must not).
fn read_messages(m: &MessageArgs) -> Result<tokio::sync::mpsc::Receiver<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let one = if let Some(text) = &m.message {
        Bytes::from(text.clone().into_bytes())
    } else if let Some(path) = &m.file {
        let data = std::fs::read(path)
            .with_context(|| format!("-f {}: cannot read the file", path.display()))?;
        Bytes::from(data)
    } else if m.null {
        Bytes::new()
    } else {
        std::thread::spawn(move || read_lines(std::io::stdin().lock(), tx));
        return Ok(rx);
    };
    // The channel has room: this never fails.
    let _ = tx.try_send(one);
    Ok(rx)
}

/// One message per line, without its line ending, until end of input.
fn read_lines(mut input: impl BufRead, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if tx.blocking_send(Bytes::copy_from_slice(&line)).is_err() {
            return;
        }
    }
}

pub async fn run_sub(args: RawSubArgs) -> Result<ExitCode> {
    for f in &args.filters {
        check_filter(f)?;
    }
    let endpoint = args.conn.spec()?.resolve(Role::Server)?;
    let persistent = args.common.persistent;
    let client_id = match (&endpoint.client_id, persistent) {
        (Some(id), _) => id.clone(),
        (None, true) => bail!("--persistent: needs a fixed client id; pass -i CLIENT_ID"),
        (None, false) => unique_client_id("mqttkit-sub"),
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
    let printer = RawPrinter {
        print_topic: args.print_topic,
        json: args.common.json,
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

/// Writes each payload as it is (bytes, then a newline), like mosquitto_sub.
struct RawPrinter {
    print_topic: bool,
    json: bool,
}

#[derive(Serialize)]
struct RawJson<'a> {
    topic: &'a str,
    /// The payload as text (invalid UTF-8 replaced).
    payload: std::borrow::Cow<'a, str>,
    qos: u8,
    retain: bool,
}

impl Print for RawPrinter {
    fn print(&mut self, out: &mut Out, p: &Publish) -> Result<Handled> {
        let w = out.writer();
        if self.json {
            let line = RawJson {
                topic: &p.topic,
                payload: String::from_utf8_lossy(&p.payload),
                qos: p.qos as u8,
                retain: p.retain,
            };
            serde_json::to_writer(&mut *w, &line)?;
        } else {
            if self.print_topic {
                w.write_all(p.topic.as_bytes())?;
                w.write_all(b" ")?;
            }
            w.write_all(&p.payload)?;
        }
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
        read_lines(&b"a\nb c\r\n\nlast"[..], tx);
        let got: Vec<Bytes> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, vec!["a", "b c\r", "", "last"]);
    }
}
