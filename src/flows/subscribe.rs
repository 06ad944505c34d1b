//! Subscribers: the server's view of all telemetry, and a device's commands,
//! as printers over [`crate::pipeline`] (and `--sink`, the store handler).
//!
//! Acknowledgements are manual: a QoS 1 message is acknowledged only after
//! it was decoded and written out, and messages past `--count` are left
//! unacknowledged, so a persistent session gets them next time instead of
//! losing them.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::mqtt::Message;
use anyhow::{bail, Context, Result};
use prost::Message as _;
use rangemap::RangeInclusiveSet;
use serde::Serialize;

use super::schema_sub::SchemaPrinter;
use super::{
    device_id, qos, validate_device_id, Out, SubCommandArgs, SubCommonArgs, SubTelemetryArgs,
};
use crate::mqtt::{
    command_topic, device_of_topic, telemetry_topic, unique_client_id, Endpoint, Props, Protocol,
    Role, ALL_TELEMETRY,
};
use crate::pipeline::quarantine::{payload_problem, DeadLetterFile, Rejected};
use crate::pipeline::{self, Acks, Batching, Handled, Handler, SubscribeConfig};
use crate::proto::v1::telemetry::Status;
use crate::proto::{Command, CommandReply, Telemetry, COMMAND_REPLY_TYPE};
use crate::schema::{Role as SchemaRole, Schema};
use crate::telemetry::{rfc3339_nanos, Escaped, HumanLine, HumanTime};

/// Longest a received line waits in the stdout buffer (when not a TTY).
const FLUSH_AFTER: Duration = Duration::from_millis(10);

pub async fn run(command: super::SubCommand) -> Result<ExitCode> {
    match command {
        super::SubCommand::Telemetry(a) => run_telemetry(a).await,
        super::SubCommand::Command(a) => run_command(a).await,
    }
}

pub async fn run_telemetry(args: SubTelemetryArgs) -> Result<ExitCode> {
    if let Some(id) = &args.device_id {
        validate_device_id(id)?;
    }
    if let Some(schema) = super::raw::load_schema(&args.schema)? {
        return run_schema_telemetry(args, schema).await;
    }
    let filter = match &args.device_id {
        Some(id) => telemetry_topic(id),
        None => ALL_TELEMETRY.to_string(),
    };
    if args.sink.is_some() {
        return run_sink(args, vec![filter], crate::sink::Tables::Telemetry).await;
    }
    let spec = args.conn.spec()?;
    let endpoint = spec.resolve(Role::Server)?;
    warn_if_not_the_server(&spec, &endpoint);
    let identity = identity_name(&endpoint, "server");
    let fixed_id = match &args.device_id {
        Some(id) => format!("{identity}-sub-telemetry-{id}"),
        None => format!("{identity}-sub-telemetry"),
    };
    let fixed_id = args.share.client_id(fixed_id, args.common.persistent)?;
    let filters = args.share.filters(vec![filter]);
    let printer = TelemetryPrinter {
        msg: Telemetry::default(),
        json: args.common.json,
        // Only a bounded run needs to know what it has seen.
        seen: args.common.count.map(|_| HashMap::new()),
        dead_letter: DeadLetterFile::new(&dead_letter_dir(&args)),
        rejects: Vec::new(),
    };
    subscribe(&endpoint, &args.common, &fixed_id, filters, printer).await
}

/// `sub telemetry --schema`: the schema's telemetry filters, decoded by it.
async fn run_schema_telemetry(args: SubTelemetryArgs, schema: Schema) -> Result<ExitCode> {
    let filters = match &args.device_id {
        Some(id) => schema.device_topics(SchemaRole::Telemetry, id),
        None => schema.filters(SchemaRole::Telemetry),
    };
    let filters = match (filters.is_empty(), &args.schema.message_type) {
        (false, _) => filters,
        // The one-off form (--proto --message): mqttkit's telemetry topics.
        (true, Some(_)) => {
            vec![(args.device_id.as_deref()).map_or(ALL_TELEMETRY.to_string(), telemetry_topic)]
        }
        (true, None) => bail!(
            "--schema: no [[topic]] has role = \"telemetry\"; mark the telemetry topics with it"
        ),
    };
    if args.sink.is_some() {
        // Each telemetry type into its own table (crate::sink::user).
        let tables = crate::sink::UserTables::new(schema)?;
        let tables = crate::sink::Tables::User(std::sync::Arc::new(tables));
        return run_sink(args, filters, tables).await;
    }
    let spec = args.conn.spec()?;
    let endpoint = spec.resolve(Role::Server)?;
    let identity = identity_name(&endpoint, "server");
    let fixed_id = format!("{identity}-sub-telemetry-schema");
    let fixed_id = args.share.client_id(fixed_id, args.common.persistent)?;
    let filters = args.share.filters(filters);
    let printer = SchemaPrinter {
        schema,
        json: args.common.json,
        seen: args.common.count.map(|_| HashMap::new()),
        dead_letter: DeadLetterFile::new(&dead_letter_dir(&args)),
        rejects: Vec::new(),
    };
    subscribe(&endpoint, &args.common, &fixed_id, filters, printer).await
}

pub async fn run_command(args: SubCommandArgs) -> Result<ExitCode> {
    if let Some(schema) = super::raw::load_schema(&args.schema)? {
        return super::schema_command::subscribe(args, schema).await;
    }
    let device = device_id(&args.conn, args.device_id.as_deref())?;
    let endpoint = args.conn.spec()?.resolve(Role::Device(&device))?;
    let filter = command_topic(&device);
    let fixed_id = format!("{device}-sub-commands");
    if args.reply && endpoint.protocol == Protocol::V311 {
        bail!("--reply: MQTT 3.1.1 has no response topics; drop -V 311 (MQTT 5 is the default)");
    }
    let printer = CommandPrinter {
        json: args.common.json,
        reply: args.reply,
        device: device.clone(),
    };
    subscribe(&endpoint, &args.common, &fixed_id, vec![filter], printer).await
}

/// `--dead-letter DIR`, else OUT/dead-letter.
fn dead_letter_dir(args: &SubTelemetryArgs) -> PathBuf {
    (args.sink.dead_letter.clone()).unwrap_or_else(|| args.conn.out.join("dead-letter"))
}

/// Storing, not printing: see crate::sink (acks only after commit). The
/// sink takes `sub`'s options or refuses them here, before anything runs.
async fn run_sink(
    args: SubTelemetryArgs,
    filters: Vec<String>,
    tables: crate::sink::Tables,
) -> Result<ExitCode> {
    if args.common.timeout.is_some() {
        bail!("--timeout/-W: not used with --sink (a sink runs until stopped); stop it with SIGTERM instead");
    }
    if args.common.json {
        bail!("--json: not used with --sink (the messages go to the store, not to stdout); drop --json and read the rows with `mqttkit sink stats URL --json`");
    }
    let sink = crate::sink::Sink::open(&args.sink, &dead_letter_dir(&args), tables).await?;
    let spec = args.conn.spec()?;
    let endpoint = spec.resolve(Role::Server)?;
    warn_if_not_the_server(&spec, &endpoint);
    let client_id = match &endpoint.client_id {
        Some(id) => id.clone(),
        None => {
            let id = sink.default_client_id(args.device_id.as_deref(), &filters);
            (args.share).client_id(id, true)?
        }
    };
    // Always persistent: the session keeps what arrives while the sink is
    // down (the at-least-once guarantee); --persistent says it again.
    let filters = args.share.filters(filters);
    let cfg = subscribe_config(&args.common, filters, client_id, true);
    sink.run(&endpoint, &cfg).await
}

/// The pipeline's configuration from `sub`'s flags: the one place they are read.
fn subscribe_config(
    common: &SubCommonArgs,
    filters: Vec<String>,
    client_id: String,
    persistent: bool,
) -> SubscribeConfig {
    SubscribeConfig {
        filters,
        qos: qos(common.qos),
        client_id,
        persistent,
        reconnect_timeout: Some(common.reconnect_timeout),
        count: common.count,
        acks: Acks::AfterCommit,
        connect_timeout: None,
        max_packet: common.max_packet,
    }
}

/// The certificate's file stem (its identity name), for stable client ids.
/// mosquitto (MQTT 3.1.1) grants a subscription its ACL denies and then
/// delivers nothing, so a device certificate reading every device's
/// telemetry would wait in silence: say so up front.
fn warn_if_not_the_server(spec: &crate::mqtt::ConnectSpec, endpoint: &Endpoint) {
    let Some((cert, _)) = &endpoint.identity else {
        return;
    };
    let server = spec
        .load_profile()
        .ok()
        .flatten()
        .and_then(|p| p.server_identity);
    let cn = crate::identity::common_name_of_file(cert);
    if let (Some(server), Some(cn)) = (server, cn) {
        if cn != server {
            crate::note!(
                "warning: {} is identity '{}', not the server identity '{}' that the broker lets read every device's telemetry; unless `broker up --server-identity {}` made it one, nothing will arrive (use the profile's server identity, or --cert/--key of one)",
                cert.display(),
                crate::telemetry::Escaped(&cn),
                crate::telemetry::Escaped(&server),
                crate::telemetry::Escaped(&cn)
            );
        }
    }
}

fn identity_name(endpoint: &Endpoint, fallback: &str) -> String {
    crate::mqtt::client_id::identity_of(endpoint).unwrap_or_else(|| fallback.to_string())
}

/// Prints messages to stdout.
pub(crate) trait Print: Send {
    fn print(&mut self, out: &mut Out, p: &Message) -> Result<Handled>;

    /// Makes durable what is not printed (quarantined messages), before the
    /// commit acknowledges it.
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }

    /// See [`Handler::reply`].
    fn reply(&mut self, _p: &Message) -> Option<pipeline::Reply> {
        None
    }
}

pub(super) async fn subscribe<P: Print>(
    endpoint: &Endpoint,
    common: &SubCommonArgs,
    fixed_id: &str,
    filters: Vec<String>,
    printer: P,
) -> Result<ExitCode> {
    let client_id = match (&endpoint.client_id, common.persistent) {
        (Some(id), _) => id.clone(),
        (None, true) => fixed_id.to_string(),
        // In the identity's namespace, which the broker binds to it.
        (None, false) => unique_client_id(fixed_id),
    };
    let banner = format!(
        "subscribed to {} on {} as {client_id}{}",
        filters.join(", "),
        endpoint.describe(),
        if common.persistent {
            " (persistent session)"
        } else {
            ""
        }
    );
    let cfg = subscribe_config(common, filters, client_id, common.persistent);
    let mut handler = Printing::new(printer, banner);
    let (shutdown, timed_out) = super::raw::stop_after(common.timeout);
    let summary = pipeline::run(endpoint, &cfg, shutdown, &mut handler).await?;
    let skipped_note = if summary.skipped > 0 {
        format!(", {} rejected (not telemetry)", summary.skipped)
    } else {
        String::new()
    };
    crate::note!(
        "sub: {} message(s) received{skipped_note}, {} reconnects",
        summary.counted,
        summary.reconnects
    );
    Ok(super::raw::exit_status(&summary, cfg.count, &timed_out))
}

/// A printer as a pipeline handler: a message is durable once its line has
/// left our stdout buffer.
pub(crate) struct Printing<P> {
    out: Out,
    printer: P,
    banner: String,
}

impl<P: Print> Printing<P> {
    pub(crate) fn new(printer: P, banner: String) -> Self {
        Printing {
            out: Out::new(),
            printer,
            banner,
        }
    }
}

impl<P: Print> Handler for Printing<P> {
    fn handle(&mut self, p: &Message) -> Result<Handled> {
        (self.printer)
            .print(&mut self.out, p)
            .context("writing to stdout")
    }

    fn commit(&mut self) -> impl std::future::Future<Output = Result<()>> + Send {
        let flushed =
            (self.printer.commit()).and_then(|()| self.out.flush().context("writing to stdout"));
        async move { flushed }
    }

    fn batching(&self) -> Batching {
        if self.out.is_tty() {
            // Written and flushed line by line: acknowledge each at once.
            Batching {
                max_wait: Duration::ZERO,
                max_messages: 1,
            }
        } else {
            // Into a pipe, lines are flushed in batches, at most FLUSH_AFTER
            // after the first unflushed one: readers see messages as they
            // come without a write per line.
            Batching {
                max_wait: FLUSH_AFTER,
                max_messages: usize::MAX,
            }
        }
    }

    fn subscribed(&mut self, _resumed: bool) {
        crate::note!("{}", self.banner);
    }

    fn reply(&mut self, p: &Message) -> Option<pipeline::Reply> {
        self.printer.reply(p)
    }
}

struct TelemetryPrinter {
    /// Decoded into the same message each time: no allocation once warm.
    msg: Telemetry,
    json: bool,
    /// With --count: the seqs already printed per device, so redeliveries
    /// do not end the run before N distinct messages arrived. Seqs mostly
    /// arrive in order, so a set of ranges stays a few entries long.
    seen: Option<HashMap<String, RangeInclusiveSet<u64>>>,
    /// Messages that are not telemetry, kept until the next commit.
    dead_letter: DeadLetterFile,
    rejects: Vec<Rejected>,
}

impl TelemetryPrinter {
    /// Warns about a message that is no reading and keeps it for the
    /// dead-letter file; it is acknowledged with the next commit.
    fn reject(&mut self, p: &Message, reason: String) -> Handled {
        let r = Rejected::new(p, reason);
        r.warn(&self.dead_letter.path().display().to_string());
        self.rejects.push(r);
        Handled::Skipped
    }
}

#[derive(Serialize)]
struct TelemetryJson<'a> {
    topic: &'a str,
    device_id: &'a str,
    seq: u64,
    /// `time_unix_nano` as RFC 3339 with nanoseconds (jq rounds the integer).
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    time_unix_nano: u64,
    /// When mqttkit received the message, RFC 3339 with nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    received: Option<String>,
    temperature_c: f64,
    humidity_pct: f64,
    pressure_hpa: f64,
    battery_v: f64,
    rssi_dbm: i32,
    status: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dup: bool,
}

impl Print for TelemetryPrinter {
    fn commit(&mut self) -> Result<()> {
        self.dead_letter.append(&self.rejects)?;
        self.rejects.clear();
        Ok(())
    }

    fn print(&mut self, out: &mut Out, p: &Message) -> Result<Handled> {
        if let Some(problem) = payload_problem(&p.payload, "Telemetry") {
            return Ok(self.reject(p, problem));
        }
        self.msg.clear();
        if let Err(e) = self.msg.merge(p.payload.as_ref()) {
            return Ok(self.reject(p, format!("not a Telemetry message ({e})")));
        }
        let m = &self.msg;
        let topic_device = device_of_topic(&p.topic);
        if topic_device != Some(m.device_id.as_str()) {
            tracing::warn!(
                "{}: message says device_id '{}', not the topic's device",
                Escaped(&p.topic),
                Escaped(&m.device_id)
            );
        }
        let status = Status::try_from(m.status).unwrap_or(Status::Unspecified);
        let w = out.writer();
        if self.json {
            serde_json::to_writer(
                &mut *w,
                &TelemetryJson {
                    topic: &p.topic,
                    device_id: &m.device_id,
                    seq: m.seq,
                    time: rfc3339_nanos(m.time_unix_nano as i128),
                    time_unix_nano: m.time_unix_nano,
                    received: rfc3339_nanos(crate::clock::now_unix_nano() as i128),
                    temperature_c: m.temperature_c,
                    humidity_pct: m.humidity_pct,
                    pressure_hpa: m.pressure_hpa,
                    battery_v: m.battery_v,
                    rssi_dbm: m.rssi_dbm,
                    status: status.as_str_name(),
                    dup: p.dup,
                },
            )?;
        } else {
            let device = topic_device.unwrap_or(&m.device_id);
            write!(
                w,
                "{}",
                HumanLine {
                    device,
                    telemetry: m
                }
            )?;
        }
        out.end_line()?;
        let first_time = match &mut self.seen {
            Some(seen) => {
                let seqs = match seen.get_mut(m.device_id.as_str()) {
                    Some(seqs) => seqs,
                    None => seen.entry(m.device_id.clone()).or_default(),
                };
                let new = !seqs.contains(&m.seq);
                if new {
                    seqs.insert(m.seq..=m.seq);
                }
                new
            }
            None => true,
        };
        Ok(if first_time {
            Handled::Counted
        } else {
            Handled::Repeated
        })
    }
}

fn warn_undecodable(topic: &str, size: usize, what: &str, err: &prost::DecodeError) {
    let topic = Escaped(topic);
    crate::note!("warning: {topic}: {size}-byte payload is not a {what} message ({err}); skipped");
}

#[derive(Serialize)]
struct CommandJson<'a> {
    topic: &'a str,
    id: &'a str,
    device_id: &'a str,
    name: &'a str,
    params: &'a std::collections::BTreeMap<String, String>,
    time_unix_nano: u64,
}

struct CommandPrinter {
    json: bool,
    /// `--reply`: answer each command that names a response topic.
    reply: bool,
    device: String,
}

impl Print for CommandPrinter {
    fn print(&mut self, out: &mut Out, p: &Message) -> Result<Handled> {
        print_command(out, p, self.json)
    }

    fn reply(&mut self, p: &Message) -> Option<pipeline::Reply> {
        if !self.reply {
            return None;
        }
        let props = p.props.as_deref()?;
        let topic = props.response_topic.clone()?;
        let reply = match Command::decode(p.payload.as_ref()) {
            Ok(cmd) if !p.payload.is_empty() => CommandReply {
                message: format!("received {}", cmd.name),
                id: cmd.id,
                ok: true,
                ..CommandReply::default()
            },
            Ok(_) => CommandReply {
                message: "empty payload: not a Command".into(),
                ..CommandReply::default()
            },
            Err(e) => CommandReply {
                message: format!("not a Command: {e}"),
                ..CommandReply::default()
            },
        };
        let reply = CommandReply {
            device_id: self.device.clone(),
            time_unix_nano: crate::clock::now_unix_nano(),
            ..reply
        };
        Some(pipeline::Reply {
            topic,
            payload: reply.encode_to_vec().into(),
            props: Props {
                correlation_data: props.correlation_data.clone(),
                content_type: Some(super::props::protobuf_content_type(COMMAND_REPLY_TYPE)),
                ..Props::default()
            },
        })
    }
}

fn print_command(out: &mut Out, p: &Message, json: bool) -> Result<Handled> {
    if let Some(problem) = payload_problem(&p.payload, "Command") {
        let topic = Escaped(&p.topic);
        crate::note!(
            "warning: {topic}: {}-byte message: {problem}; skipped",
            p.payload.len()
        );
        return Ok(Handled::Skipped);
    }
    let cmd = match Command::decode(p.payload.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            warn_undecodable(&p.topic, p.payload.len(), "Command", &e);
            return Ok(Handled::Skipped);
        }
    };
    let w = out.writer();
    if json {
        serde_json::to_writer(
            &mut *w,
            &CommandJson {
                topic: &p.topic,
                id: &cmd.id,
                device_id: &cmd.device_id,
                name: &cmd.name,
                params: &cmd.params,
                time_unix_nano: cmd.time_unix_nano,
            },
        )?;
    } else {
        write!(
            w,
            "{} {} id={} {}",
            Escaped(&cmd.device_id),
            Escaped(&cmd.name),
            Escaped(&cmd.id),
            HumanTime(cmd.time_unix_nano as i128)
        )?;
        for (k, v) in &cmd.params {
            write!(w, " {}={}", Escaped(k), Escaped(v))?;
        }
    }
    out.end_line()?;
    Ok(Handled::Counted)
}
