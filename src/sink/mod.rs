//! The telemetry sink: `sub telemetry --sink URL` stores every decoded
//! [`Telemetry`] in SQLite, PostgreSQL, InfluxDB or Amazon Timestream, and
//! `sink stats URL` tells what arrived.
//!
//! Delivery is at-least-once into the store (a message is acknowledged to the
//! broker only after the batch holding it is committed) and rows are keyed by
//! (device_id, seq), so a redelivered message never becomes a second row.
//! A message that can never be a row (empty, too large, not a Telemetry, or
//! a row the store refuses for its content) is quarantined, not retried: a
//! `rejected` table or measurement and/or a dead-letter file
//! (`pipeline::quarantine`), then acknowledged, so one message never blocks
//! the others. NaN/±Inf readings are stored (each store's mapping is in its
//! module and in the README).

mod influx;
mod pgpass;
mod postgres;
mod sqlite;
pub mod subscriber;
mod timestream;
pub mod user;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::Serialize;
use url::Url;

use crate::pipeline::quarantine::Rejected;
use crate::proto::Telemetry;
use crate::telemetry::{rfc3339_nanos, Escaped, HumanTime};

pub use subscriber::Sink;
pub use user::{UserRow, UserTables};

/// What a sink stores: mqttkit's Telemetry in `telemetry`, or the user's
/// telemetry types of a schema, each in its own table ([`user`]).
#[derive(Debug, Clone)]
pub enum Tables {
    Telemetry,
    User(Arc<UserTables>),
}

/// The rows of one commit.
#[derive(Debug, Clone)]
pub enum Batch {
    Telemetry(Vec<TelemetryRow>),
    User(Vec<UserRow>),
}

impl Batch {
    pub fn new(tables: &Tables) -> Batch {
        match tables {
            Tables::Telemetry => Batch::Telemetry(Vec::new()),
            Tables::User(_) => Batch::User(Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Batch::Telemetry(r) => r.len(),
            Batch::User(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        match self {
            Batch::Telemetry(r) => r.clear(),
            Batch::User(r) => r.clear(),
        }
    }
}

/// The schemes `--sink` accepts, for error messages and help.
pub const ACCEPTED: &str =
    "sqlite:PATH, postgres://USER@HOST:PORT/DB, influx://HOST:PORT/DB (influxs:// for TLS), timestream://DATABASE/TABLE";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("--sink {url}: {what}; accepted: {ACCEPTED}")]
    BadUrl { url: String, what: String },
}

/// Where telemetry is stored, parsed from `--sink URL`.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkUrl {
    Sqlite(PathBuf),
    /// A libpq-style URL, passed to tokio-postgres as is.
    Postgres(String),
    Influx(influx::InfluxTarget),
    Timestream {
        database: String,
        table: String,
    },
}

impl std::str::FromStr for SinkUrl {
    type Err = SinkError;

    fn from_str(url: &str) -> Result<Self, SinkError> {
        let bad = |what: &str| SinkError::BadUrl {
            url: redact(url),
            what: what.to_string(),
        };
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| bad("no scheme (like sqlite:PATH)"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                // Accept sqlite:PATH, sqlite://PATH and sqlite:///ABS/PATH.
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(bad("no file path after sqlite:"));
                }
                Ok(SinkUrl::Sqlite(PathBuf::from(path)))
            }
            "postgres" | "postgresql" => {
                if !rest.starts_with("//") {
                    return Err(bad("expected postgres://USER@HOST:PORT/DB"));
                }
                Ok(SinkUrl::Postgres(url.to_string()))
            }
            "influx" | "influxs" => influx::InfluxTarget::parse(scheme == "influxs", rest)
                .map(SinkUrl::Influx)
                .map_err(|what| bad(&what)),
            "timestream" => {
                timestream_target(url).ok_or_else(|| bad("expected timestream://DATABASE/TABLE"))
            }
            other => Err(bad(&format!("unknown scheme '{other}'"))),
        }
    }
}

/// `timestream://DATABASE/TABLE`: the host names the database, the one
/// path segment the table; nothing else (user, port, query) is meaningful.
fn timestream_target(url: &str) -> Option<SinkUrl> {
    let u = Url::parse(url).ok()?;
    let database = u.host_str().filter(|h| !h.is_empty())?;
    let table = u.path().strip_prefix('/')?;
    let plain = u.username().is_empty() && u.port().is_none() && u.query().is_none();
    (plain && !table.is_empty() && !table.contains('/')).then(|| SinkUrl::Timestream {
        database: database.to_string(),
        table: table.to_string(),
    })
}

/// The URL without a password, for messages.
pub fn redact(url: &str) -> String {
    // Passwords hide in the user info and in query parameters (libpq's
    // `?password=`, tokens); error messages must never echo them.
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                // Only fails for URLs without a host, which have no password.
                let _ = u.set_password(Some("***"));
            }
            if let Some(q) = u.query().map(|q| redact_pairs(q, "&")) {
                u.set_query(Some(&q));
            }
            u.to_string()
        }
        // Not a URL Url understands (libpq's multi-host `h1,h2`): drop the user info.
        Err(_) if url.contains("://") => {
            let (scheme, rest) = url.split_once("://").unwrap_or_default();
            let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
            let host = base.rsplit_once('@').map_or(base, |(_, host)| host);
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", redact_pairs(query, "&"))
            };
            format!("{scheme}://{host}{query}")
        }
        // A libpq key/value string (`host=... password=...`) instead of a URL.
        Err(_) => redact_pairs(url, " "),
    }
}

/// `key=value` pairs joined by `sep`, with the values of secret keys hidden.
fn redact_pairs(pairs: &str, sep: &str) -> String {
    pairs
        .split(sep)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(sep)
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password") || k.contains("token") || k.contains("secret") || k == "p"
}

#[cfg(test)]
#[test]
fn redact_hides_every_password_form() {
    assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
    assert_eq!(
        redact("postgres://127.0.0.1:1/db?password=hunter2&sslmode=disable"),
        "postgres://127.0.0.1:1/db?password=***&sslmode=disable"
    );
    assert_eq!(redact("host=h password=hunter2"), "host=h password=***");
    assert_eq!(
        redact("influx://h:8086/db?u=a&p=x"),
        "influx://h:8086/db?u=a&p=***"
    );
    assert_eq!(
        redact("influxs://me:s3cret@h:8086/db?org=o"),
        "influxs://me:***@h:8086/db?org=o"
    );
    assert_eq!(
        redact("postgres://u:pw@h1:5432,h2:5433/db?token=t"),
        "postgres://h1:5432,h2:5433/db?token=***"
    );
    assert_eq!(redact("sqlite:data/t.db"), "sqlite:data/t.db");
}

/// One stored message: who, which, when, and every measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryRow {
    pub device_id: String,
    pub seq: i64,
    /// The device's timestamp (send time), ns since the Unix epoch.
    pub time_unix_nano: i64,
    /// When the sink received the message, ns since the Unix epoch.
    pub received_unix_nano: i64,
    pub temperature_c: f64,
    pub humidity_pct: f64,
    pub pressure_hpa: f64,
    pub battery_v: f64,
    pub rssi_dbm: i32,
    /// The status name without its prefix: OK, WARNING, ERROR or UNSPECIFIED.
    pub status: String,
}

impl TelemetryRow {
    /// The measurements that are NaN or infinite, as `name=NaN|+Inf|-Inf`
    /// joined by commas; `None` when all are finite. Stores that cannot hold
    /// such a value (SQLite REAL, InfluxDB, Timestream) leave the value out
    /// (NULL, or no field) and keep this as the flag saying why.
    pub fn nonfinite(&self) -> Option<String> {
        let list: Vec<String> = (self.float_measures().into_iter())
            .filter(|(_, v)| !v.is_finite())
            .map(|(name, v)| match v {
                v if v.is_nan() => format!("{name}=NaN"),
                v if v > 0.0 => format!("{name}=+Inf"),
                _ => format!("{name}=-Inf"),
            })
            .collect();
        (!list.is_empty()).then(|| list.join(","))
    }

    /// The floating-point measurements, by column name: the one list the
    /// stores that write one field per measurement iterate over.
    pub fn float_measures(&self) -> [(&'static str, f64); 4] {
        [
            ("temperature_c", self.temperature_c),
            ("humidity_pct", self.humidity_pct),
            ("pressure_hpa", self.pressure_hpa),
            ("battery_v", self.battery_v),
        ]
    }

    /// A row for `t` received on `topic_device`'s topic. The topic names the
    /// device (the broker's ACLs vouch for it); the payload's id is a fallback.
    pub fn from_telemetry(
        t: &Telemetry,
        topic_device: Option<&str>,
        received_unix_nano: i64,
    ) -> Result<Self, String> {
        let device_id = match topic_device {
            Some(d) if !d.is_empty() => d.to_string(),
            _ if !t.device_id.is_empty() => t.device_id.clone(),
            _ => return Err("no device id in topic or payload".into()),
        };
        let seq = i64::try_from(t.seq).map_err(|_| format!("seq {} out of range", t.seq))?;
        let time_unix_nano = i64::try_from(t.time_unix_nano)
            .map_err(|_| format!("time_unix_nano {} out of range", t.time_unix_nano))?;
        let status = crate::proto::v1::telemetry::Status::try_from(t.status)
            .map(|s| s.as_str_name().trim_start_matches("STATUS_").to_string())
            .unwrap_or_else(|_| t.status.to_string());
        Ok(TelemetryRow {
            device_id,
            seq,
            time_unix_nano,
            received_unix_nano,
            temperature_c: t.temperature_c,
            humidity_pct: t.humidity_pct,
            pressure_hpa: t.pressure_hpa,
            battery_v: t.battery_v,
            rssi_dbm: t.rssi_dbm,
            status,
        })
    }
}

/// What arrived for one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStats {
    /// The user's table (`sub telemetry --schema`); none for `telemetry`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub device_id: String,
    pub rows: u64,
    /// `None` (null) in a table without seq.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Device timestamps (ns since the Unix epoch) of the earliest and latest rows.
    pub first_time_unix_nano: i64,
    pub last_time_unix_nano: i64,
    /// Seq values missing between 0 and last_seq.
    pub missing: u64,
    /// Missing seq ranges, inclusive, at most [`MAX_GAPS`] of them.
    pub gaps: Vec<[i64; 2]>,
}

pub const MAX_GAPS: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub sink: String,
    pub rows: u64,
    pub devices: Vec<DeviceStats>,
    /// Quarantined messages in the store's `rejected` table (or measurement).
    pub rejected: u64,
    pub rejected_devices: Vec<RejectedStats>,
}

/// Quarantined messages of one device (`""`: topics that name none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedStats {
    pub device_id: String,
    pub rejected: u64,
    /// The reason of the latest one.
    pub last_reason: String,
}

/// Gap ranges from ascending, distinct seq values; seq starts at 0 by contract.
pub fn gaps_of(seqs: impl IntoIterator<Item = i64>) -> Vec<[i64; 2]> {
    let mut gaps = Vec::new();
    let mut expect = 0i64;
    for s in seqs {
        if s > expect && gaps.len() < MAX_GAPS {
            gaps.push([expect, s - 1]);
        }
        expect = expect.max(s + 1);
    }
    gaps
}

/// An open store with its schema in place.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
    Influx(influx::InfluxStore),
    Timestream(timestream::TimestreamStore),
}

/// What a committed batch did.
#[derive(Debug, Default, Clone)]
pub struct Written {
    /// Rows the store took (new or already present).
    pub stored: usize,
    /// Of those, rows already present (a redelivery), when the store can tell.
    pub duplicates: usize,
    /// Rows the store refused for their content (index in the batch, the
    /// store's reason): quarantined, then acknowledged.
    pub refused: Vec<(usize, String)>,
}

impl Store {
    /// Connects and creates (or, for the user's tables, evolves) the schema;
    /// fails when the store is unusable or a table cannot hold the rows.
    pub async fn open(url: &SinkUrl, tables: &Tables) -> Result<Store> {
        Store::connect(url, tables, true).await
    }

    /// `create`: make the tables; without it (`sink stats`), the user's
    /// tables are only read.
    async fn connect(url: &SinkUrl, tables: &Tables, create: bool) -> Result<Store> {
        let user = match tables {
            Tables::User(t) => Some(t.clone()),
            Tables::Telemetry => None,
        };
        let prepare = Prepare { user, create };
        Ok(match url {
            SinkUrl::Sqlite(path) => Store::Sqlite(sqlite::SqliteStore::open(path, prepare).await?),
            SinkUrl::Postgres(u) => Store::Postgres(postgres::PgStore::open(u, prepare).await?),
            SinkUrl::Influx(t) => Store::Influx(influx::InfluxStore::open(t, prepare.user).await?),
            SinkUrl::Timestream { database, table } => Store::Timestream(
                timestream::TimestreamStore::open(database, table, prepare.user).await?,
            ),
        })
    }

    /// Commits `batch` idempotently: a row already stored is left as it is.
    pub async fn write_batch(&mut self, batch: &Batch) -> Result<Written> {
        if batch.is_empty() {
            return Ok(Written::default());
        }
        match (self, batch) {
            (Store::Sqlite(s), Batch::Telemetry(rows)) => s.write_batch(rows).await,
            (Store::Postgres(s), Batch::Telemetry(rows)) => s.write_batch(rows).await,
            (Store::Influx(s), Batch::Telemetry(rows)) => s.write_batch(rows).await,
            (Store::Timestream(s), Batch::Telemetry(rows)) => s.write_batch(rows).await,
            (Store::Sqlite(s), Batch::User(rows)) => s.write_user(rows).await,
            (Store::Postgres(s), Batch::User(rows)) => s.write_user(rows).await,
            (Store::Influx(s), Batch::User(rows)) => s.write_user(rows).await,
            (Store::Timestream(s), Batch::User(rows)) => s.write_user(rows).await,
        }
    }

    /// Whether quarantined messages go into the store itself (a `rejected`
    /// table or measurement); otherwise only to the dead-letter file.
    pub fn keeps_rejected(&self) -> bool {
        !matches!(self, Store::Timestream(_))
    }

    /// Whether its `rejected` table holds the payloads too (SQL stores); for
    /// the others the payloads go to the dead-letter file.
    pub fn keeps_payloads(&self) -> bool {
        matches!(self, Store::Sqlite(_) | Store::Postgres(_))
    }

    /// Writes quarantined messages into the store (see [`Store::keeps_rejected`]).
    pub async fn quarantine(&mut self, rejected: &[Rejected]) -> Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        match self {
            Store::Sqlite(s) => s.quarantine(rejected).await,
            Store::Postgres(s) => s.quarantine(rejected).await,
            Store::Influx(s) => s.quarantine(rejected).await,
            Store::Timestream(_) => Ok(()),
        }
    }

    pub async fn rejected_stats(&mut self) -> Result<Vec<RejectedStats>> {
        match self {
            Store::Sqlite(s) => s.rejected_stats().await,
            Store::Postgres(s) => s.rejected_stats().await,
            Store::Influx(s) => s.rejected_stats().await,
            Store::Timestream(_) => Ok(Vec::new()),
        }
    }

    /// Per device of `telemetry`, or of every user table (each device named
    /// with its table).
    pub async fn stats(&mut self, tables: &Tables) -> Result<Vec<DeviceStats>> {
        let names: Vec<Option<&str>> = match tables {
            Tables::Telemetry => vec![None],
            Tables::User(t) => t.tables.iter().map(|t| Some(t.name.as_str())).collect(),
        };
        let mut out = Vec::new();
        for table in names {
            let mut devices = match self {
                Store::Sqlite(s) => s.stats(table).await?,
                Store::Postgres(s) => s.stats(table).await?,
                Store::Influx(s) => s.stats(table).await?,
                Store::Timestream(s) => s.stats().await?,
            };
            for d in &mut devices {
                d.table = table.map(str::to_string);
            }
            out.extend(devices);
        }
        Ok(out)
    }
}

/// What a store makes when it opens: `telemetry` (no `user`), or the user's
/// tables; `create: false` (`sink stats`) reads the user's tables only.
pub(crate) struct Prepare {
    pub user: Option<Arc<UserTables>>,
    pub create: bool,
}

/// Missing seqs and their gaps from a device's row count and last seq; the
/// seqs are read (`seqs`) only when some are missing.
pub(crate) fn fill_gaps<E>(
    d: &mut DeviceStats,
    seqs: impl FnOnce(&str) -> Result<Vec<i64>, E>,
) -> Result<(), E> {
    let Some(last) = d.last_seq else {
        return Ok(());
    };
    d.missing = ((last + 1).max(0) as u64).saturating_sub(d.rows);
    if d.missing > 0 {
        d.gaps = gaps_of(seqs(&d.device_id)?);
    }
    Ok(())
}

/// `--sink` and its batching knobs, flattened into `sub telemetry`.
#[derive(Debug, Clone, Args, Default)]
pub struct SinkOptions {
    /// Store every message: sqlite:PATH, postgres://USER@HOST:PORT/DB,
    /// influx://HOST:PORT/DB (or /BUCKET?org=ORG for the v2 API, token in
    /// INFLUX_TOKEN), timestream://DATABASE/TABLE. Messages are acknowledged
    /// only once stored. With --schema: each telemetry type in a table of its
    /// own (named from it: acme.plant.v1.Metrics -> acme_plant_v1_metrics),
    /// keyed by (device_id, seq) when seq is mapped, else by (device_id,
    /// time_unix_nano) when time is (a second message with the same device
    /// time is taken for a redelivery), else no key (a message redelivered
    /// after a crash is a second row); a field added to the .proto adds its
    /// column, a changed field type is an error before subscribing.
    #[arg(long, value_name = "URL")]
    pub sink: Option<String>,
    /// With --sink: most rows per commit; keep it at most half the broker's
    /// max_inflight_messages (1000 for `broker up`) so delivery never stalls.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// With --sink: longest a received message waits before its batch is committed, in ms.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub batch_ms: u64,
    /// Where messages that can never be stored or printed (empty, too large,
    /// not a Telemetry, refused by the store) are kept, as DIR/rejected.jsonl
    /// (default: OUT/dead-letter). With a SQLite or PostgreSQL --sink they go
    /// to its `rejected` table (and here too only when this is given);
    /// InfluxDB counts them in its `rejected` measurement.
    #[arg(long, value_name = "DIR")]
    pub dead_letter: Option<PathBuf>,
}

impl SinkOptions {
    pub fn is_some(&self) -> bool {
        self.sink.is_some()
    }
}

/// `mqttkit sink ...`
#[derive(Debug, Args)]
pub struct SinkArgs {
    #[command(subcommand)]
    pub command: SinkCommand,
}

#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Rows per device, first and last timestamps, and gaps in seq.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The store, as given to `sub telemetry --sink`.
    #[arg(value_name = "URL")]
    pub url: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The tables of this schema's telemetry types (what `sub telemetry
    /// --schema F --sink URL` stores) instead of mqttkit's `telemetry`.
    #[command(flatten)]
    pub schema: crate::schema::SchemaArgs,
}

pub async fn run(args: SinkArgs) -> Result<ExitCode> {
    match args.command {
        SinkCommand::Stats(a) => stats(a).await,
    }
}

async fn stats(args: StatsArgs) -> Result<ExitCode> {
    let url: SinkUrl = args.url.parse()?;
    let tables = match args.schema.source() {
        src if src.is_empty() => Tables::Telemetry,
        src => Tables::User(Arc::new(UserTables::new(crate::schema::Schema::load(
            &src,
        )?)?)),
    };
    let mut store = Store::open_existing(&url, &tables).await?;
    let devices = store.stats(&tables).await?;
    let rejected_devices = store.rejected_stats().await?;
    let stats = Stats {
        sink: redact(&args.url),
        rows: devices.iter().map(|d| d.rows).sum(),
        devices,
        rejected: rejected_devices.iter().map(|d| d.rejected).sum(),
        rejected_devices,
    };
    if args.json {
        crate::output::print_json(&stats.to_json())?;
    } else {
        crate::output::print_stdout(&render_stats(&stats))?;
    }
    Ok(ExitCode::SUCCESS)
}

impl Store {
    /// Like [`Store::open`], but SQLite must already exist: stats of a typo'd
    /// path should not create an empty database.
    async fn open_existing(url: &SinkUrl, tables: &Tables) -> Result<Store> {
        if let SinkUrl::Sqlite(path) = url {
            if !path.exists() {
                anyhow::bail!(
                    "sink stats: {} does not exist; give the path used with `sub telemetry --sink`",
                    path.display()
                );
            }
        }
        Store::connect(url, tables, false).await
    }
}

/// A device's stats as JSON: the integers, plus their RFC 3339 forms.
#[derive(Serialize)]
struct DeviceStatsJson<'a> {
    #[serde(flatten)]
    stats: &'a DeviceStats,
    first_time: Option<String>,
    last_time: Option<String>,
}

#[derive(Serialize)]
struct StatsJson<'a> {
    sink: &'a str,
    rows: u64,
    devices: Vec<DeviceStatsJson<'a>>,
    rejected: u64,
    rejected_devices: &'a [RejectedStats],
}

impl Stats {
    fn to_json(&self) -> StatsJson<'_> {
        let devices = self
            .devices
            .iter()
            .map(|d| DeviceStatsJson {
                stats: d,
                first_time: rfc3339_nanos(d.first_time_unix_nano.into()),
                last_time: rfc3339_nanos(d.last_time_unix_nano.into()),
            })
            .collect();
        StatsJson {
            sink: &self.sink,
            rows: self.rows,
            devices,
            rejected: self.rejected,
            rejected_devices: &self.rejected_devices,
        }
    }
}

fn gap_list(gaps: &[[i64; 2]]) -> String {
    let list: Vec<String> = gaps
        .iter()
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect();
    list.join(", ")
}

pub fn render_stats(s: &Stats) -> String {
    let mut out = format!("{}: {} rows, {} devices", s.sink, s.rows, s.devices.len());
    if s.rejected > 0 {
        out.push_str(&format!(", {} rejected", s.rejected));
    }
    out.push('\n');
    out.push_str(&render_rows(s));
    out.push_str(&render_rejected(&s.rejected_devices));
    out
}

/// Quarantined messages per device, with the latest reason.
fn render_rejected(devices: &[RejectedStats]) -> String {
    if devices.is_empty() {
        return String::new();
    }
    let rows = (devices.iter())
        .map(|d| {
            vec![
                Escaped(&d.device_id).to_string(),
                d.rejected.to_string(),
                Escaped(&d.last_reason).to_string(),
            ]
        })
        .collect();
    crate::output::table(
        &["REJECTED_DEVICE", "REJECTED", "LAST_REASON"],
        &[false, true, false],
        rows,
    )
}

fn render_rows(s: &Stats) -> String {
    let mut out = String::new();
    if s.devices.is_empty() {
        return out;
    }
    let with_table = s.devices.iter().any(|d| d.table.is_some());
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let rows = (s.devices.iter())
        .map(|d| {
            let mut row = vec![
                Escaped(&d.device_id).to_string(),
                d.rows.to_string(),
                opt(d.first_seq),
                opt(d.last_seq),
                d.missing.to_string(),
                HumanTime(d.first_time_unix_nano.into()).to_string(),
                HumanTime(d.last_time_unix_nano.into()).to_string(),
            ];
            if with_table {
                row.insert(0, d.table.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    let mut head = vec![
        "DEVICE",
        "ROWS",
        "FIRST_SEQ",
        "LAST_SEQ",
        "MISSING",
        "FIRST",
        "LAST",
    ];
    let mut right = vec![false, true, true, true, true, false, false];
    if with_table {
        head.insert(0, "TABLE");
        right.insert(0, false);
    }
    out.push_str(&crate::output::table(&head, &right, rows));
    for d in s.devices.iter().filter(|d| !d.gaps.is_empty()) {
        out.push_str(&format!(
            "{} gaps: {}\n",
            Escaped(&d.device_id),
            gap_list(&d.gaps)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            "sqlite:data/t.db".parse::<SinkUrl>().unwrap(),
            SinkUrl::Sqlite("data/t.db".into())
        );
        assert_eq!(
            "sqlite:///tmp/t.db".parse::<SinkUrl>().unwrap(),
            SinkUrl::Sqlite("/tmp/t.db".into())
        );
        assert!(matches!(
            "postgresql://u@127.0.0.1:5432/db"
                .parse::<SinkUrl>()
                .unwrap(),
            SinkUrl::Postgres(_)
        ));
        assert_eq!(
            "timestream://db/tbl".parse::<SinkUrl>().unwrap(),
            SinkUrl::Timestream {
                database: "db".into(),
                table: "tbl".into()
            }
        );
        assert!("timestream://db".parse::<SinkUrl>().is_err());
        assert!("sqlite:".parse::<SinkUrl>().is_err());
    }

    #[test]
    fn unknown_scheme_names_flag_and_schemes() {
        let e = "mysql://u:secret@h/db"
            .parse::<SinkUrl>()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--sink mysql://u:***@h/db: unknown scheme 'mysql'"),
            "{e}"
        );
        assert!(
            e.contains("sqlite:PATH") && e.contains("timestream://"),
            "{e}"
        );
        assert!(!e.contains('\n') && !e.contains("secret"));
    }

    #[test]
    fn gaps() {
        assert_eq!(gaps_of([0, 1, 2]), Vec::<[i64; 2]>::new());
        assert_eq!(gaps_of([2, 3, 7]), vec![[0, 1], [4, 6]]);
    }

    #[test]
    fn row_from_telemetry() {
        let t = Telemetry {
            device_id: "payload-id".into(),
            seq: 7,
            time_unix_nano: 1_700_000_000_000_000_001,
            temperature_c: 21.5,
            rssi_dbm: -60,
            status: 2,
            ..Default::default()
        };
        let r = TelemetryRow::from_telemetry(&t, Some("d1"), 5).unwrap();
        assert_eq!(
            (r.device_id.as_str(), r.seq, r.status.as_str()),
            ("d1", 7, "WARNING")
        );
        let r = TelemetryRow::from_telemetry(&t, None, 5).unwrap();
        assert_eq!(r.device_id, "payload-id");
        let big = Telemetry { seq: u64::MAX, ..t };
        assert!(TelemetryRow::from_telemetry(&big, Some("d1"), 5).is_err());
    }
}
