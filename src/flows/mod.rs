//! `mqttkit pub` and `mqttkit sub`: protobuf telemetry (device -> server) and
//! commands (server -> device) over the shared connection layer.
//!
//! Both directions drive rumqttc's event loop from one task, so the QoS 1
//! bookkeeping (what was written, what was acknowledged, what must be sent
//! again after a reconnect) never races with the network.

pub mod props;
pub mod publish;
pub mod raw;
mod reply;
mod schema_command;
mod schema_sub;
pub mod subscribe;

use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::mqtt::ConnectionArgs;

/// `pub -t TOPIC` (raw payloads, mosquitto_pub's flags) or `pub ROLE`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_flag = true,
    mut_arg("host", mosquitto_host)
)]
pub struct PubArgs {
    #[command(subcommand)]
    pub command: Option<PubCommand>,
    #[command(flatten)]
    pub raw: raw::RawPubArgs,
    #[command(flatten)]
    pub help: HelpFlag,
}

/// `-h` is the host on `pub` and `sub` (as for mosquitto_pub/mosquitto_sub),
/// so help is `--help` only there.
#[derive(Debug, Clone, Args)]
pub struct HelpFlag {
    /// Print help (`-h` is --host here).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// `-h HOST`, with `-H` kept as an alias.
pub fn mosquitto_host(arg: clap::Arg) -> clap::Arg {
    arg.short('h').visible_short_alias('H')
}

#[derive(Debug, Subcommand)]
pub enum PubCommand {
    /// Publish dummy telemetry as a device to devices/ID/telemetry.
    Telemetry(PubTelemetryArgs),
    /// Send one command as the server to devices/ID/commands.
    Command(PubCommandArgs),
}

/// `sub -t FILTER` (raw payloads, mosquitto_sub's flags) or `sub ROLE`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_flag = true,
    mut_arg("host", mosquitto_host)
)]
pub struct SubArgs {
    #[command(subcommand)]
    pub command: Option<SubCommand>,
    #[command(flatten)]
    pub raw: raw::RawSubArgs,
    #[command(flatten)]
    pub help: HelpFlag,
}

// Parsed once per process: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SubCommand {
    /// Receive and decode telemetry as the server (all devices, or one).
    Telemetry(SubTelemetryArgs),
    /// Receive and decode commands as a device.
    Command(SubCommandArgs),
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true, mut_arg("host", mosquitto_host))]
pub struct PubTelemetryArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub help: HelpFlag,
    /// Device to publish as (default: the profile's device).
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// Number of messages to publish (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Messages per second (default: as fast as the in-flight window allows).
    #[arg(long, value_name = "MSG_PER_S")]
    pub rate: Option<f64>,
    /// QoS: 1 waits for the broker's PUBACK of every message, 2 for its
    /// PUBCOMP (exactly once); 0 fires and forgets.
    #[arg(long, short = 'q', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Retain: the broker keeps the last message for subscribers that come later.
    #[arg(long, short = 'r')]
    pub retain: bool,
    /// Sequence number of the first message.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub start_seq: u64,
    /// Most messages written but not yet acknowledged at any time
    /// (default 256; 20 at QoS 2, see `publish::window`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16384))]
    pub window: Option<u16>,
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
    /// Publish the schema's telemetry type on its telemetry topic instead
    /// of mqttkit's Telemetry on devices/ID/telemetry.
    #[command(flatten)]
    pub schema: crate::schema::SchemaArgs,
    /// A value for a {label} of the schema's telemetry topic (repeatable), e.g. --label site=osaka.
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = crate::schema::args::parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub props: props::PropsArgs,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true, mut_arg("host", mosquitto_host))]
pub struct PubCommandArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub help: HelpFlag,
    /// Device the command is for.
    #[arg(long, value_name = "ID")]
    pub device_id: String,
    /// What the device should do, e.g. reboot or set_interval (mqttkit's
    /// Command; with --schema the command is --json '{...}').
    #[arg(long)]
    pub name: Option<String>,
    /// A parameter KEY=VALUE; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// QoS: 1 waits for PUBACK, 2 for PUBCOMP, 0 for nothing.
    #[arg(long, short = 'q', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Print the sent command as JSON on stdout (default: its id). With
    /// --schema: `--json '{...}'` is the command, your command type in the
    /// canonical proto3 JSON mapping (what was sent is printed as JSON).
    #[arg(long, value_name = "JSON", num_args = 0..=1)]
    pub json: Option<Option<String>>,
    /// Send the schema's command type on its command topic instead of
    /// mqttkit's Command on devices/ID/commands.
    #[command(flatten)]
    pub schema: crate::schema::SchemaArgs,
    /// A value for a {label} of the schema's command topic (repeatable), e.g. --label site=osaka.
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = crate::schema::args::parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub props: props::PropsArgs,
    /// MQTT 5 request/response: name devices/ID/replies as the response
    /// topic, wait this long for the device's CommandReply (from `sub
    /// command --reply`) and print it; no reply in time: exit 1.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub wait_reply: Option<std::time::Duration>,
}

/// Options every subscriber has.
#[derive(Debug, Clone, Args)]
pub struct SubCommonArgs {
    /// Exit after N decoded messages (default: until Ctrl-C).
    #[arg(long, short = 'C', value_name = "N")]
    pub count: Option<u64>,
    /// Exit after this long (a bare number is seconds), with status 27 if
    /// --count messages had not arrived by then (as mosquitto_sub -W).
    #[arg(long = "timeout", short = 'W', value_name = "SECONDS", value_parser = crate::units::parse_positive_duration)]
    pub timeout: Option<std::time::Duration>,
    /// One JSON object per line on stdout. Not with --sink (refused: the
    /// messages go to the store; read them with `mqttkit sink stats URL --json`).
    #[arg(long)]
    pub json: bool,
    /// Persistent session (clean session off, fixed client id): messages sent
    /// while this subscriber was away arrive when it comes back. A --sink is
    /// always persistent.
    #[arg(long)]
    pub persistent: bool,
    /// QoS of the subscription: 1 acknowledges each message once printed (or
    /// stored, with --sink); 2 the same, exactly once (PUBREC after
    /// printing); 0 has no acknowledgements, so what arrives while away or
    /// before a crash is lost.
    #[arg(long, short = 'q', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Give up after this long without a connection: 300, 30s, 5m (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_duration)]
    pub reconnect_timeout: std::time::Duration,
    /// Largest message taken from the broker: 256MiB (MQTT's and mosquitto's
    /// limit, the default), 1MiB, 300KB. Keep it at least the broker's
    /// message_size_limit: a larger message ends the run with an error.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = crate::pipeline::parse_max_packet)]
    pub max_packet: usize,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true, mut_arg("host", mosquitto_host))]
pub struct SubTelemetryArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub help: HelpFlag,
    /// Only this device (default: all devices, devices/+/telemetry).
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    #[command(flatten)]
    pub common: SubCommonArgs,
    #[command(flatten)]
    pub sink: crate::sink::SinkOptions,
    /// Receive the schema's telemetry type on its telemetry topics instead
    /// of mqttkit's Telemetry on devices/+/telemetry.
    #[command(flatten)]
    pub schema: crate::schema::SchemaArgs,
    #[command(flatten)]
    pub share: ShareArgs,
}

/// Workers splitting one stream through a shared subscription.
#[derive(Debug, Clone, Default, Args)]
pub struct ShareArgs {
    /// Subscribe as one worker of shared-subscription group GROUP
    /// (`$share/GROUP/FILTER`): the broker hands each message to one worker
    /// of the group. Start several workers (e.g. sinks into one store) with
    /// one GROUP and different --worker numbers.
    #[arg(long, value_name = "GROUP", value_parser = parse_share_group)]
    pub share: Option<String>,
    /// This worker's name in the --share group, part of its client id, so a
    /// restarted worker resumes its own session (and what was in flight to it).
    #[arg(long, value_name = "NAME", requires = "share", value_parser = parse_share_group)]
    pub worker: Option<String>,
}

impl ShareArgs {
    /// The filters to subscribe to: each under `$share/GROUP/`.
    pub fn filters(&self, filters: Vec<String>) -> Vec<String> {
        match &self.share {
            Some(group) => filters
                .into_iter()
                .map(|f| format!("$share/{group}/{f}"))
                .collect(),
            None => filters,
        }
    }

    /// The client id of a worker with a kept session: `BASE-GROUP-WORKER`.
    /// Two workers with one id would take the session from each other.
    pub fn client_id(&self, base: String, persistent: bool) -> Result<String> {
        match (&self.share, &self.worker) {
            (None, _) => Ok(base),
            (Some(group), Some(worker)) => Ok(format!("{base}-{group}-{worker}")),
            (Some(group), None) if persistent => bail!(
                "--share {group}: each worker keeps a session of its own; name this one with --worker 1 (then --worker 2, ...) or give it a client id with -i"
            ),
            (Some(group), None) => Ok(crate::mqtt::unique_client_id(&format!("{base}-{group}"))),
        }
    }
}

/// A share group or worker name: one topic level, no wildcards.
fn parse_share_group(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['/', '+', '#']) || s.chars().any(char::is_control) {
        return Err(format!(
            "'{s}' must be non-empty and contain no '/', '+', '#' or control characters; e.g. --share sinks"
        ));
    }
    Ok(s.to_string())
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true, mut_arg("host", mosquitto_host))]
pub struct SubCommandArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    #[command(flatten)]
    pub help: HelpFlag,
    /// Device to receive commands as (default: the profile's device).
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    #[command(flatten)]
    pub common: SubCommonArgs,
    /// MQTT 5: answer each command that names a response topic (`pub
    /// command --wait-reply`) with a CommandReply (ok, and what was received).
    #[arg(long)]
    pub reply: bool,
    /// Receive the schema's command type on the device's command topics
    /// (printed as `sub -t` prints them) instead of mqttkit's Command.
    #[command(flatten)]
    pub schema: crate::schema::SchemaArgs,
}

pub async fn run_pub(args: PubArgs) -> Result<ExitCode> {
    match args.command {
        Some(command) => on_worker(publish::run(command)).await,
        None => on_worker(raw::run_pub(args.raw)).await,
    }
}

pub async fn run_sub(args: SubArgs) -> Result<ExitCode> {
    match args.command {
        Some(command) => on_worker(subscribe::run(command)).await,
        None => on_worker(raw::run_sub(args.raw)).await,
    }
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

pub(crate) use crate::pipeline::qos;

/// The device a device-side command acts as: the flag, else the profile's.
pub(crate) fn device_id(conn: &ConnectionArgs, flag: Option<&str>) -> Result<String> {
    let id = match flag {
        Some(id) => id.to_string(),
        None => match conn.spec()?.default_device()? {
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
    uuid::Uuid::new_v4().to_string()
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
