//! `mqttkit pub` and `mqttkit sub`: protobuf telemetry (device -> server) and
//! commands (server -> device) over the shared connection layer.
//!
//! Both directions drive rumqttc's event loop from one task, so the QoS 1
//! bookkeeping (what was written, what was acknowledged, what must be sent
//! again after a reconnect) never races with the network.

pub mod dummy;
pub mod publish;
pub mod subscribe;

use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use rumqttc::{ConnectReturnCode, ConnectionError, QoS};

use crate::mqtt::{ConnectionArgs, Endpoint};

#[derive(Debug, Args)]
pub struct PubArgs {
    #[command(subcommand)]
    pub command: PubCommand,
}

#[derive(Debug, Subcommand)]
pub enum PubCommand {
    /// Publish dummy telemetry as a device to devices/ID/telemetry.
    Telemetry(PubTelemetryArgs),
    /// Send one command as the server to devices/ID/commands.
    Command(PubCommandArgs),
}

#[derive(Debug, Args)]
pub struct SubArgs {
    #[command(subcommand)]
    pub command: SubCommand,
}

#[derive(Debug, Subcommand)]
pub enum SubCommand {
    /// Receive and decode telemetry as the server (all devices, or one).
    Telemetry(SubTelemetryArgs),
    /// Receive and decode commands as a device.
    Command(SubCommandArgs),
}

#[derive(Debug, Args)]
pub struct PubTelemetryArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Device to publish as (default: the profile's device).
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// Number of messages to publish (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Messages per second (default: as fast as the in-flight window allows).
    #[arg(long, value_name = "MSG_PER_S")]
    pub rate: Option<f64>,
    /// QoS: 1 waits for the broker's PUBACK of every message; 0 fires and forgets.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Sequence number of the first message.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub start_seq: u64,
    /// Most messages written but not yet acknowledged at any time.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=16384))]
    pub window: u16,
    /// Most readings kept while the broker is unreachable (with --rate);
    /// when full, taking readings pauses.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_queued: usize,
    /// Give up after this long without a connection: 300, 30s, 5m (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_duration)]
    pub reconnect_timeout: std::time::Duration,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PubCommandArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Device the command is for.
    #[arg(long, value_name = "ID")]
    pub device_id: String,
    /// What the device should do, e.g. reboot or set_interval.
    #[arg(long)]
    pub name: String,
    /// A parameter KEY=VALUE; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Print the sent command as JSON on stdout (default: its id).
    #[arg(long)]
    pub json: bool,
}

/// Options every subscriber has.
#[derive(Debug, Clone, Args)]
pub struct SubCommonArgs {
    /// Exit after N decoded messages (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Persistent session (clean session off, fixed client id): messages sent
    /// while this subscriber was away arrive when it comes back.
    #[arg(long)]
    pub persistent: bool,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Give up after this long without a connection: 300, 30s, 5m (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_duration)]
    pub reconnect_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct SubTelemetryArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Only this device (default: all devices, devices/+/telemetry).
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    #[command(flatten)]
    pub common: SubCommonArgs,
    #[command(flatten)]
    pub sink: crate::sink::SinkOptions,
}

#[derive(Debug, Args)]
pub struct SubCommandArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Device to receive commands as (default: the profile's device).
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    #[command(flatten)]
    pub common: SubCommonArgs,
}

pub async fn run_pub(args: PubArgs) -> Result<ExitCode> {
    on_worker(async move {
        match args.command {
            PubCommand::Telemetry(a) => publish::run_telemetry(a).await,
            PubCommand::Command(a) => publish::run_command(a).await,
        }
    })
    .await
}

pub async fn run_sub(args: SubArgs) -> Result<ExitCode> {
    on_worker(async move {
        match args.command {
            SubCommand::Telemetry(a) => subscribe::run_telemetry(a).await,
            SubCommand::Command(a) => subscribe::run_command(a).await,
        }
    })
    .await
}

/// Runs a flow as a task on a runtime worker: the worker that receives a
/// socket event then runs the flow itself, instead of waking the `block_on`
/// thread for every batch of packets (a thread hand-off per wake-up).
async fn on_worker<F>(flow: F) -> Result<ExitCode>
where
    F: std::future::Future<Output = Result<ExitCode>> + Send + 'static,
{
    match tokio::spawn(flow).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the flow task was cancelled: {e}")),
    }
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "'{s}' is not KEY=VALUE; write e.g. --param interval=10"
        )),
    }
}

pub(crate) fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The device a device-side command acts as: the flag, else the profile's.
pub(crate) fn device_id(conn: &ConnectionArgs, flag: Option<&str>) -> Result<String> {
    let id = match flag {
        Some(id) => id.to_string(),
        None => match conn.default_device()? {
            Some(id) => id,
            None => bail!(
                "no device: pass --device-id ID (or use a profile with a device_id, e.g. --profile local after `mqttkit broker up`)"
            ),
        },
    };
    validate_device_id(&id)?;
    Ok(id)
}

pub(crate) fn validate_device_id(id: &str) -> Result<()> {
    if id.is_empty() || id.contains(['/', '+', '#']) || id.chars().any(char::is_control) {
        bail!("--device-id '{id}': must be non-empty and contain no '/', '+', '#' or control characters");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM, observable from any number of select loops.
pub(crate) struct Shutdown {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Shutdown {
    pub fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Registered here, before any network work: a signal that arrives
        // before the watcher task first runs must not kill the process
        // with the default action (no DISCONNECT, no summary).
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            let _ = tx.send(true);
            // Keep the sender alive so receivers never see a closed channel.
            std::future::pending::<()>().await;
        });
        Shutdown { rx }
    }

    /// Resolves once a stop was requested (immediately if it already was).
    pub async fn wait(&mut self) {
        if self.rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Reconnect policy: the first connection must succeed (a wrong host or
/// certificate is an error, not something to retry forever); after that,
/// exponential backoff until `give_up` without a connection.
pub(crate) struct Reconnect {
    endpoint: String,
    connected_once: bool,
    down_since: Option<Instant>,
    backoff: Duration,
    give_up: Duration,
    last_report: Option<Instant>,
    /// When the current connection got its CONNACK.
    connected_at: Option<Instant>,
    /// Connections in a row that the broker closed right after accepting them.
    short_lived: u32,
    pub reconnects: u64,
}

/// A connection closed this soon after CONNACK counts as taken over.
const SHORT_LIVED: Duration = Duration::from_millis(500);
/// Take-overs in a row before giving up with an explanation.
const TAKEN_OVER_LIMIT: u32 = 5;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often to repeat the last error while reconnecting.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Reconnect {
    pub fn new(endpoint: &Endpoint, give_up_secs: u64) -> Self {
        Reconnect {
            endpoint: endpoint.describe(),
            connected_once: false,
            down_since: None,
            backoff: BACKOFF_MIN,
            give_up: Duration::from_secs(give_up_secs),
            last_report: None,
            connected_at: None,
            short_lived: 0,
            reconnects: 0,
        }
    }

    pub fn connected(&mut self) {
        if self.connected_once {
            self.reconnects += 1;
            let down = self.down_since.map(|t| t.elapsed()).unwrap_or_default();
            crate::note!(
                "reconnected to {} after {:.1} s",
                self.endpoint,
                down.as_secs_f64()
            );
        }
        self.connected_once = true;
        self.connected_at = Some(Instant::now());
        self.down_since = None;
        self.last_report = None;
        self.backoff = BACKOFF_MIN;
    }

    /// How long to wait before the next attempt, or the error to stop with.
    pub fn failed(&mut self, err: ConnectionError) -> Result<Duration> {
        if !self.connected_once {
            bail!("{}", describe_connect_error(&self.endpoint, &err));
        }
        // Two clients with one client id take the connection from each other
        // in turn (the broker keeps one per id): say so instead of looping.
        match self.connected_at.take() {
            Some(t) if t.elapsed() < SHORT_LIVED => self.short_lived += 1,
            Some(_) => self.short_lived = 0,
            None => {}
        }
        if self.short_lived >= TAKEN_OVER_LIMIT {
            bail!(
                "{}: the broker closed the connection right after accepting it {TAKEN_OVER_LIMIT} times in a row; another client is probably connected with the same client id; pass a different --client-id",
                self.endpoint
            );
        }
        let since = *self.down_since.get_or_insert_with(|| {
            crate::note!("connection to {} lost ({err}); reconnecting", self.endpoint);
            Instant::now()
        });
        let now = Instant::now();
        match self.last_report {
            None => self.last_report = Some(now),
            Some(t) if now - t >= REPORT_EVERY => {
                self.last_report = Some(now);
                crate::note!(
                    "still reconnecting after {:.0} s: {}",
                    since.elapsed().as_secs_f64(),
                    describe_connect_error(&self.endpoint, &err)
                );
            }
            Some(_) => {}
        }
        if since.elapsed() >= self.give_up {
            bail!(
                "no connection to {} for {} s (last error: {}); giving up (see --reconnect-timeout)",
                self.endpoint,
                self.give_up.as_secs(),
                describe_connect_error(&self.endpoint, &err)
            );
        }
        tracing::debug!("reconnect attempt failed: {err}");
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Ok(delay)
    }
}

/// One line saying what went wrong connecting and what to do about it.
pub(crate) fn describe_connect_error(endpoint: &str, err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
                    "not authorized; check that the client certificate is one the broker trusts and the client id is allowed"
                }
                ConnectReturnCode::BadClientId => "client id rejected; pass another --client-id",
                ConnectReturnCode::ServiceUnavailable => "service unavailable; retry later",
                _ => "refused",
            };
            format!("broker {endpoint} refused the connection ({code:?}): {why}")
        }
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "cannot connect to {endpoint}: connection refused; is the broker running (`mqttkit broker up`) and are --host/--port right?"
        ),
        ConnectionError::Tls(e) => format!(
            "TLS handshake with {endpoint} failed: {e}; check --cafile (it must sign the broker's certificate) and that --host is a name in that certificate"
        ),
        ConnectionError::NetworkTimeout => {
            format!("cannot connect to {endpoint}: timed out; check --host/--port and firewalls")
        }
        other => format!("connection to {endpoint} failed: {other}"),
    }
}

/// Buffered stdout: one flush per line only when a person is watching.
pub(crate) struct Out {
    w: BufWriter<Stdout>,
    tty: bool,
}

impl Out {
    pub fn new() -> Self {
        let stdout = std::io::stdout();
        let tty = stdout.is_terminal();
        Out {
            w: BufWriter::with_capacity(64 * 1024, stdout),
            tty,
        }
    }

    pub fn writer(&mut self) -> &mut BufWriter<Stdout> {
        &mut self.w
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    pub fn end_line(&mut self) -> std::io::Result<()> {
        self.w.write_all(b"\n")?;
        if self.tty {
            self.w.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// A random RFC 4122 version 4 UUID, for command ids.
pub(crate) fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_ids() {
        assert_eq!(
            parse_param("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert!(parse_param("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_param("=x").is_err());
        assert!(validate_device_id("dev-1").is_ok());
        assert!(validate_device_id("a/b").is_err());
        assert!(validate_device_id("+").is_err());
        assert!(validate_device_id("").is_err());
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
