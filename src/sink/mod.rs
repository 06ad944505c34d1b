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

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::Serialize;
use url::Url;

use crate::pipeline::quarantine::Rejected;
use crate::proto::Telemetry;
use crate::telemetry::{rfc3339_nanos, Escaped, HumanTime};

pub use subscriber::Sink;

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
    pub device_id: String,
    pub rows: u64,
    pub first_seq: i64,
    pub last_seq: i64,
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
    /// Connects and creates the schema; fails when the store is unusable.
    pub async fn open(url: &SinkUrl) -> Result<Store> {
        Ok(match url {
            SinkUrl::Sqlite(path) => Store::Sqlite(sqlite::SqliteStore::open(path).await?),
            SinkUrl::Postgres(u) => Store::Postgres(postgres::PgStore::open(u).await?),
            SinkUrl::Influx(t) => Store::Influx(influx::InfluxStore::open(t).await?),
            SinkUrl::Timestream { database, table } => {
                Store::Timestream(timestream::TimestreamStore::open(database, table).await?)
            }
        })
    }

    /// Commits `rows` idempotently: a row already stored is left as it is.
    pub async fn write_batch(&mut self, rows: &[TelemetryRow]) -> Result<Written> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        match self {
            Store::Sqlite(s) => s.write_batch(rows).await,
            Store::Postgres(s) => s.write_batch(rows).await,
            Store::Influx(s) => s.write_batch(rows).await,
            Store::Timestream(s) => s.write_batch(rows).await,
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

    pub async fn stats(&mut self) -> Result<Vec<DeviceStats>> {
        match self {
            Store::Sqlite(s) => s.stats().await,
            Store::Postgres(s) => s.stats().await,
            Store::Influx(s) => s.stats().await,
            Store::Timestream(s) => s.stats().await,
        }
    }
}

/// `--sink` and its batching knobs, flattened into `sub telemetry`.
#[derive(Debug, Clone, Args, Default)]
pub struct SinkOptions {
    /// Store every message: sqlite:PATH, postgres://USER@HOST:PORT/DB,
    /// influx://HOST:PORT/DB (or /BUCKET?org=ORG for the v2 API, token in
    /// INFLUX_TOKEN), timestream://DATABASE/TABLE. Messages are acknowledged
    /// only once stored.
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
}

pub async fn run(args: SinkArgs) -> Result<ExitCode> {
    match args.command {
        SinkCommand::Stats(a) => stats(a).await,
    }
}

async fn stats(args: StatsArgs) -> Result<ExitCode> {
    let url: SinkUrl = args.url.parse()?;
    let mut store = Store::open_existing(&url).await?;
    let devices = store.stats().await?;
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
    async fn open_existing(url: &SinkUrl) -> Result<Store> {
        if let SinkUrl::Sqlite(path) = url {
            if !path.exists() {
                anyhow::bail!(
                    "sink stats: {} does not exist; give the path used with `sub telemetry --sink`",
                    path.display()
                );
            }
        }
        Store::open(url).await
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
    let rows = s
        .devices
        .iter()
        .map(|d| {
            vec![
                Escaped(&d.device_id).to_string(),
                d.rows.to_string(),
                d.first_seq.to_string(),
                d.last_seq.to_string(),
                d.missing.to_string(),
                HumanTime(d.first_time_unix_nano.into()).to_string(),
                HumanTime(d.last_time_unix_nano.into()).to_string(),
            ]
        })
        .collect();
    out.push_str(&crate::output::table(
        &[
            "DEVICE",
            "ROWS",
            "FIRST_SEQ",
            "LAST_SEQ",
            "MISSING",
            "FIRST",
            "LAST",
        ],
        &[false, true, true, true, true, false, false],
        rows,
    ));
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
