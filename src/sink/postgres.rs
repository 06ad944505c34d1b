//! PostgreSQL via tokio-postgres: one table keyed by (device_id, seq), with a
//! time index; a TimescaleDB hypertable when that extension is installed.

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls};

use super::pgpass;
use super::user::{self, quote, Cell, ColType, Dialect, Existing, Table, UserRow, UserTables};
use super::{
    fill_gaps, redact, DeviceStats, Prepare, Rejected, RejectedStats, TelemetryRow, Written,
};

pub struct PgStore {
    url: String,
    client: Client,
    conn_task: tokio::task::JoinHandle<()>,
    /// The user's tables, when storing a schema's types.
    user: Option<Arc<UserTables>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    time_unix_nano BIGINT NOT NULL,
    received_unix_nano BIGINT NOT NULL,
    temperature_c DOUBLE PRECISION NOT NULL,
    humidity_pct DOUBLE PRECISION NOT NULL,
    pressure_hpa DOUBLE PRECISION NOT NULL,
    battery_v DOUBLE PRECISION NOT NULL,
    rssi_dbm INTEGER NOT NULL,
    status TEXT NOT NULL,
    time TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(time_unix_nano / 1e9)) STORED,
    PRIMARY KEY ({pk})
)";

/// Messages quarantined by the sink (see `pipeline::quarantine`).
const REJECTED: &str = "
CREATE TABLE IF NOT EXISTS rejected (
    received_unix_nano BIGINT NOT NULL,
    topic TEXT NOT NULL,
    device_id TEXT,
    size BIGINT NOT NULL,
    reason TEXT NOT NULL,
    payload BYTEA NOT NULL,
    payload_truncated BOOLEAN NOT NULL,
    payload_sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_device_idx ON rejected (device_id);
";

/// Whether the server refused a statement for the data in it: SQLSTATE
/// classes 22 (data exception), 23 (integrity constraint) and 54 (program
/// limit exceeded). Anything else (a lost connection has no SQLSTATE) is
/// the store's trouble, retried without acknowledging.
fn row_fault(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "54"))
}

/// The server's message ("new row ... violates check constraint ...").
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

async fn log_end<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::warn!("postgres connection ended: {e}");
    }
}

/// How long connecting (TCP, TLS, startup, authentication) may take unless
/// the URL says `connect_timeout=SECONDS`: a port that accepts and never
/// answers must not hang the sink.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL's settings, resolved: tokio-postgres's config (with the password
/// and the connect timeout filled in) and the TLS roots file.
struct Resolved {
    config: Config,
    rootcert: Option<PathBuf>,
}

fn resolve(url: &str) -> Result<Resolved, String> {
    let (mut config, rootcert, passfile) = connection_config(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_password().is_none() {
        if let Some(password) = password_for(&config, passfile.as_deref()) {
            config.password(password);
        }
    }
    Ok(Resolved { config, rootcert })
}

/// `PGPASSWORD` or the password file's entry for where `config` connects.
fn password_for(config: &Config, passfile: Option<&std::path::Path>) -> Option<String> {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let user = config.get_user().unwrap_or_default();
    let target = pgpass::Target {
        host: &host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or(user),
        user,
    };
    pgpass::lookup(&target, passfile)
}

/// tokio-postgres's settings from the URL, plus what it does not know and
/// libpq users write: `sslrootcert=FILE`, `passfile=FILE` and
/// `sslmode=verify-ca|verify-full`.
/// Every TLS mode verifies the certificate and the host name (libpq's
/// verify-full); `disable`/`prefer` (the default) connect without TLS.
type UrlConfig = (Config, Option<PathBuf>, Option<PathBuf>);

fn connection_config(url: &str) -> Result<UrlConfig, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (mut rootcert, mut passfile) = (None, None);
    // Untouched parameters are passed on exactly as written.
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(key).as_str(), decode(value).as_str()) {
            ("sslrootcert", path) => rootcert = Some(PathBuf::from(path)),
            ("passfile", path) => passfile = Some(PathBuf::from(path)),
            ("sslmode", "verify-ca" | "verify-full") => kept.push("sslmode=require"),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let config = Config::from_str(&url).map_err(|e| e.to_string())?;
    if rootcert.is_some() && config.get_ssl_mode() != SslMode::Require {
        return Err("sslrootcert without TLS: add sslmode=require".into());
    }
    Ok((config, rootcert, passfile))
}

/// Roots: `sslrootcert` when given, else the system's trust store.
fn tls_config(rootcert: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    let roots = match rootcert {
        Some(path) => {
            crate::mqtt::tls::load_roots_for("sslrootcert", path).map_err(|e| anyhow!(e))?
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                bail!("no system CA certificates found; pass sslrootcert=CA.crt");
            }
            roots
        }
    };
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::mqtt::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// pg_hba.conf turns a plain connection away with invalid_authorization_specification
/// ("no pg_hba.conf entry ... no encryption"): without sslmode=require that
/// is most often a server that accepts only TLS.
fn tls_hint(plain: bool, code: Option<&SqlState>) -> &'static str {
    if plain && code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) {
        " (the server may want TLS: add ?sslmode=require, and &sslrootcert=CA.crt for a private CA)"
    } else {
        ""
    }
}

/// Connects with TLS when the config asks for it; errors name the URL (redacted).
async fn connect(
    config: &Config,
    rootcert: Option<&PathBuf>,
    what: &str,
) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let plain = config.get_ssl_mode() != SslMode::Require;
    let cannot_connect = |e: tokio_postgres::Error| {
        let hint = tls_hint(plain, e.code());
        // The server's words are in the error's source ("db error: FATAL: ...").
        let e = anyhow::Error::new(e);
        anyhow!("{what}: cannot connect: {e:#}{hint}")
    };
    if plain {
        let (client, conn) = config.connect(NoTls).await.map_err(cannot_connect)?;
        return Ok((client, tokio::spawn(log_end(conn))));
    }
    let tls = tls_config(rootcert).map_err(|e| anyhow!("{what}: {e}"))?;
    let (client, conn) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await
        .map_err(cannot_connect)?;
    Ok((client, tokio::spawn(log_end(conn))))
}

impl PgStore {
    pub(crate) async fn open(url: &str, prepare: Prepare) -> Result<Self> {
        let what = || format!("--sink {}", redact(url));
        let Resolved { config, rootcert } = resolve(url).map_err(|e| anyhow!("{}: {e}", what()))?;
        let limit = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        // tokio-postgres's own timeout covers only the TCP connect, not a
        // server that accepts and then never answers the startup.
        let label = what();
        let connecting = tokio::time::timeout(limit, connect(&config, rootcert.as_ref(), &label));
        let (client, conn_task) = connecting.await.map_err(|_| {
            anyhow!(
                "{}: cannot connect: no answer within {} s (connect_timeout); is a PostgreSQL server listening there?",
                what(),
                limit.as_secs_f64()
            )
        })??;
        let store = PgStore {
            url: url.to_string(),
            client,
            conn_task,
            user: prepare.user,
        };
        match &store.user {
            None => (store.create_schema().await)
                .with_context(|| format!("{}: cannot create the telemetry table", what()))?,
            Some(tables) => {
                (store.client.batch_execute(REJECTED).await)
                    .with_context(|| format!("{}: cannot create the rejected table", what()))?;
                if prepare.create {
                    store.create_user_tables(tables, &what()).await?;
                }
            }
        }
        Ok(store)
    }

    /// Creates the user's tables, or adds the columns an existing one lacks;
    /// every table is checked before anything changes, all in one transaction.
    async fn create_user_tables(&self, tables: &UserTables, what: &str) -> Result<()> {
        let mut ddl = Vec::new();
        for t in &tables.tables {
            let existing = self.existing(&t.name).await?;
            if existing.columns.is_empty() {
                ddl.push(t.create_sql(Dialect::Postgres));
                continue;
            }
            for c in user::evolve(t, &existing, Dialect::Postgres, what)? {
                let ty = c.ty.sql(Dialect::Postgres);
                crate::note!("sink: table {}: adding column {} ({ty})", t.name, c.name);
                ddl.push(user::add_column_sql(&t.name, &c, Dialect::Postgres));
            }
        }
        if ddl.is_empty() {
            return Ok(());
        }
        let sql = format!("BEGIN; {}; COMMIT;", ddl.join(";\n"));
        (self.client.batch_execute(&sql).await)
            .map_err(anyhow::Error::new)
            .with_context(|| format!("{what}: cannot create or alter the tables"))
    }

    /// A table's columns (with their types) and primary key, in the current
    /// schema; no columns when there is no such table.
    async fn existing(&self, table: &str) -> Result<Existing> {
        let cols = self
            .client
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .await?;
        let key = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indrelid \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
                 WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace \
                 AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
                &[&table],
            )
            .await?;
        Ok(Existing {
            columns: cols.iter().map(|r| (r.get(0), r.get(1))).collect(),
            key: key.iter().map(|r| r.get(0)).collect(),
        })
    }

    async fn create_schema(&self) -> Result<()> {
        let timescale = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await?
            .is_some();
        // A hypertable's unique keys must hold its time column; a redelivery
        // carries the same device time, so the key still de-duplicates.
        let pk = if timescale {
            "device_id, seq, time_unix_nano"
        } else {
            "device_id, seq"
        };
        self.client
            .batch_execute(&TABLE.replace("{pk}", pk))
            .await?;
        self.client
            .batch_execute("CREATE INDEX IF NOT EXISTS telemetry_time_idx ON telemetry (time)")
            .await?;
        self.client.batch_execute(REJECTED).await?;
        if timescale {
            self.client
                .batch_execute(
                    "SELECT create_hypertable('telemetry', 'time_unix_nano', \
                     chunk_time_interval => 86400000000000, if_not_exists => TRUE)",
                )
                .await?;
        }
        Ok(())
    }

    /// One statement per batch; when the server refuses it for a row's
    /// content (a data exception, a constraint, a limit), the rows one by
    /// one, so only the poison row is refused. A lost connection is an error
    /// (retried by the caller, nothing acknowledged).
    pub async fn write_batch(&self, rows: &[TelemetryRow]) -> Result<Written> {
        let this = self;
        let what = || format!("writing to {}", redact(&this.url));
        write_or_split(rows.len(), what, move |r| this.insert(&rows[r])).await
    }

    /// The user's rows: one statement per table in the batch, split like
    /// [`PgStore::write_batch`] when a row is refused.
    pub async fn write_user(&self, rows: &[UserRow]) -> Result<Written> {
        let tables = (self.user.clone()).ok_or_else(|| anyhow!("no user tables"))?;
        let this = self;
        let what = || format!("writing to {}", redact(&this.url));
        let mut written = Written::default();
        for (t, table) in tables.tables.iter().enumerate() {
            let index: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].table == t).collect();
            if index.is_empty() {
                continue;
            }
            let mine: Vec<&UserRow> = index.iter().map(|&i| &rows[i]).collect();
            let mine = mine.as_slice();
            let insert = move |r: Range<usize>| this.insert_user(table, &mine[r]);
            let w = write_or_split(mine.len(), &what, insert).await?;
            written.stored += w.stored;
            written.duplicates += w.duplicates;
            (written.refused).extend(w.refused.into_iter().map(|(i, why)| (index[i], why)));
        }
        Ok(written)
    }

    /// One `INSERT ... SELECT FROM UNNEST(...)` of `rows` into `table`.
    async fn insert_user(
        &self,
        table: &Table,
        rows: &[&UserRow],
    ) -> Result<u64, tokio_postgres::Error> {
        let mut arrays = vec![Array::Text(
            rows.iter().map(|r| Some(r.device_id.as_str())).collect(),
        )];
        for l in 0..table.labels.len() {
            arrays.push(Array::Text(
                rows.iter().map(|r| r.labels[l].as_deref()).collect(),
            ));
        }
        arrays.push(Array::Int(rows.iter().map(|r| r.seq).collect()));
        arrays.push(Array::Int(rows.iter().map(|r| r.time_unix_nano).collect()));
        arrays.push(Array::Int(
            rows.iter().map(|r| Some(r.received_unix_nano)).collect(),
        ));
        for (f, col) in table.fields.iter().enumerate() {
            arrays.push(Array::of(col.ty, rows.iter().map(|r| &r.cells[f])));
        }
        let types: Vec<ColType> = table
            .columns(Dialect::Postgres)
            .iter()
            .map(|c| c.ty)
            .collect();
        let sql = unnest_insert(table, &types);
        let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(Array::param).collect();
        self.client.execute(&sql, &params).await
    }
    /// NaN and ±Infinity go in as they are: double precision holds them.
    async fn insert(&self, rows: &[TelemetryRow]) -> Result<u64, tokio_postgres::Error> {
        let mut cols = Cols::default();
        for r in rows {
            cols.device_id.push(&r.device_id);
            cols.seq.push(r.seq);
            cols.time.push(r.time_unix_nano);
            cols.received.push(r.received_unix_nano);
            cols.temperature.push(r.temperature_c);
            cols.humidity.push(r.humidity_pct);
            cols.pressure.push(r.pressure_hpa);
            cols.battery.push(r.battery_v);
            cols.rssi.push(r.rssi_dbm);
            cols.status.push(&r.status);
        }
        self.client
            .execute(
                "INSERT INTO telemetry (device_id, seq, time_unix_nano, received_unix_nano, \
                 temperature_c, humidity_pct, pressure_hpa, battery_v, rssi_dbm, status) \
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], \
                 $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::int4[], $10::text[]) \
                 ON CONFLICT DO NOTHING",
                &[
                    &cols.device_id,
                    &cols.seq,
                    &cols.time,
                    &cols.received,
                    &cols.temperature,
                    &cols.humidity,
                    &cols.pressure,
                    &cols.battery,
                    &cols.rssi,
                    &cols.status,
                ],
            )
            .await
    }

    pub async fn quarantine(&mut self, rejected: &[Rejected]) -> Result<()> {
        let stmt = self
            .client
            .prepare(
                "INSERT INTO rejected (received_unix_nano, topic, device_id, size, reason, \
                 payload, payload_truncated, payload_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await?;
        let tx = self.client.transaction().await?;
        for r in rejected {
            tx.execute(
                &stmt,
                &[
                    &r.received_unix_nano,
                    &r.topic,
                    &r.device_id,
                    &(r.size as i64),
                    &r.reason,
                    &r.payload,
                    &r.truncated,
                    &r.sha256,
                ],
            )
            .await?;
        }
        tx.commit()
            .await
            .with_context(|| format!("writing to {} (rejected)", redact(&self.url)))
    }

    pub async fn rejected_stats(&mut self) -> Result<Vec<RejectedStats>> {
        let rows = self
            .client
            .query(
                "SELECT COALESCE(device_id, ''), COUNT(*), \
                 (SELECT reason FROM rejected l WHERE l.device_id IS NOT DISTINCT FROM r.device_id \
                  ORDER BY received_unix_nano DESC LIMIT 1) \
                 FROM rejected r GROUP BY device_id ORDER BY 1",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RejectedStats {
                device_id: r.get(0),
                rejected: r.get::<_, i64>(1) as u64,
                last_reason: r.get(2),
            })
            .collect())
    }

    /// Per device of `telemetry`, or of the user's `table` (none when it
    /// does not exist).
    pub async fn stats(&mut self, table: Option<&str>) -> Result<Vec<DeviceStats>> {
        let table = table.unwrap_or("telemetry");
        if self.existing(table).await?.columns.is_empty() {
            return Ok(Vec::new());
        }
        let t = quote(table);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT device_id, COUNT(*), MIN(seq), MAX(seq), \
                     MIN(COALESCE(time_unix_nano, received_unix_nano)), \
                     MAX(COALESCE(time_unix_nano, received_unix_nano)) \
                     FROM {t} GROUP BY device_id ORDER BY device_id"
                ),
                &[],
            )
            .await?;
        let seq_sql =
            format!("SELECT seq FROM {t} WHERE device_id = $1 AND seq IS NOT NULL ORDER BY seq");
        let mut out = Vec::new();
        for r in rows {
            let mut d = DeviceStats {
                table: None,
                device_id: r.get(0),
                rows: r.get::<_, i64>(1) as u64,
                first_seq: r.get(2),
                last_seq: r.get(3),
                first_time_unix_nano: r.get(4),
                last_time_unix_nano: r.get(5),
                missing: 0,
                gaps: Vec::new(),
            };
            let seqs = match d.last_seq.is_some() {
                true => self.client.query(&seq_sql, &[&d.device_id]).await?,
                false => Vec::new(),
            };
            fill_gaps(&mut d, |_| {
                Ok::<_, anyhow::Error>(seqs.iter().map(|r| r.get::<_, i64>(0)).collect())
            })?;
            out.push(d);
        }
        Ok(out)
    }
}

/// One statement for a batch; when the server refuses it for a row's
/// content, `insert` row by row so only the poison rows are refused.
async fn write_or_split<F, Fut>(n: usize, what: impl Fn() -> String, insert: F) -> Result<Written>
where
    F: Fn(Range<usize>) -> Fut,
    Fut: Future<Output = Result<u64, tokio_postgres::Error>>,
{
    match insert(0..n).await {
        Ok(new) => {
            return Ok(Written {
                stored: n,
                duplicates: n.saturating_sub(new as usize),
                refused: Vec::new(),
            })
        }
        Err(e) if n > 1 && row_fault(&e) => {
            tracing::debug!("batch refused ({e}); writing its rows one by one");
        }
        Err(e) if row_fault(&e) => {}
        Err(e) => return Err(anyhow::Error::new(e)).with_context(&what),
    }
    let mut written = Written::default();
    for i in 0..n {
        match insert(i..i + 1).await {
            Ok(new) => {
                written.stored += 1;
                written.duplicates += usize::from(new == 0);
            }
            Err(e) if row_fault(&e) => written
                .refused
                .push((i, format!("the store refused the row: {}", db_message(&e)))),
            Err(e) => return Err(anyhow::Error::new(e)).with_context(&what),
        }
    }
    Ok(written)
}

/// One column of a user batch, as the array UNNEST takes.
enum Array<'a> {
    Int(Vec<Option<i64>>),
    Real(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<&'a str>>),
    Bytes(Vec<Option<&'a [u8]>>),
}

impl<'a> Array<'a> {
    /// NaN and ±Infinity go in as they are: double precision holds them.
    fn of(ty: ColType, cells: impl Iterator<Item = &'a Cell>) -> Array<'a> {
        match ty {
            ColType::Int => Array::Int(
                cells
                    .map(|c| match c {
                        Cell::Int(v) => Some(*v),
                        _ => None,
                    })
                    .collect(),
            ),
            ColType::Real => Array::Real(
                cells
                    .map(|c| match c {
                        Cell::Real(v) => Some(*v),
                        _ => None,
                    })
                    .collect(),
            ),
            ColType::Bool => Array::Bool(
                cells
                    .map(|c| match c {
                        Cell::Bool(v) => Some(*v),
                        _ => None,
                    })
                    .collect(),
            ),
            ColType::Text | ColType::Json => Array::Text(
                cells
                    .map(|c| match c {
                        Cell::Text(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect(),
            ),
            ColType::Bytes => Array::Bytes(
                cells
                    .map(|c| match c {
                        Cell::Bytes(b) => Some(b.as_slice()),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Array::Int(v) => v,
            Array::Real(v) => v,
            Array::Bool(v) => v,
            Array::Text(v) => v,
            Array::Bytes(v) => v,
        }
    }
}

/// `INSERT INTO t (cols) SELECT c0, c1::jsonb, ... FROM UNNEST($1::text[], ...)`;
/// JSON travels as text and is cast on the server.
fn unnest_insert(table: &Table, types: &[ColType]) -> String {
    let array = |ty: ColType| match ty {
        ColType::Int => "int8[]",
        ColType::Real => "float8[]",
        ColType::Bool => "bool[]",
        ColType::Text | ColType::Json => "text[]",
        ColType::Bytes => "bytea[]",
    };
    let params: Vec<String> = (types.iter().enumerate())
        .map(|(i, ty)| format!("${}::{}", i + 1, array(*ty)))
        .collect();
    let select: Vec<String> = (types.iter().enumerate())
        .map(|(i, ty)| match ty {
            ColType::Json => format!("c{i}::jsonb"),
            _ => format!("c{i}"),
        })
        .collect();
    let names: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM UNNEST({}) AS u({}) ON CONFLICT DO NOTHING",
        quote(&table.name),
        table.column_list(Dialect::Postgres),
        select.join(", "),
        params.join(", "),
        names.join(", ")
    )
}

#[derive(Default)]
struct Cols<'a> {
    device_id: Vec<&'a str>,
    seq: Vec<i64>,
    time: Vec<i64>,
    received: Vec<i64>,
    temperature: Vec<f64>,
    humidity: Vec<f64>,
    pressure: Vec<f64>,
    battery: Vec<f64>,
    rssi: Vec<i32>,
    status: Vec<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pg_hba_refusal_without_tls_hints_at_sslmode() {
        let hba = SqlState::from_code("28000");
        assert!(tls_hint(true, Some(&hba)).contains("?sslmode=require"));
        assert_eq!(tls_hint(false, Some(&hba)), "");
        assert_eq!(tls_hint(true, Some(&SqlState::INVALID_PASSWORD)), "");
        assert_eq!(tls_hint(true, None), "");
    }

    #[test]
    fn libpq_tls_parameters_are_understood() {
        let (c, root, _) = connection_config("postgres://u@h:5433/db").unwrap();
        assert_eq!((c.get_ssl_mode(), root), (SslMode::Prefer, None));

        let (c, root, passfile) = connection_config(
            "postgres://u:p%40ss@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&application_name=a%20b&passfile=%2Fp",
        )
        .unwrap();
        assert_eq!(passfile, Some(PathBuf::from("/p")));
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(root, Some(PathBuf::from("/etc/ca.crt")));
        assert_eq!(c.get_application_name(), Some("a b"));
        assert_eq!(c.get_password(), Some(&b"p@ss"[..]));

        let e = connection_config("postgres://u@h/db?sslrootcert=ca.crt").unwrap_err();
        assert!(e.contains("sslmode=require"), "{e}");
        assert!(connection_config("postgres://u@h/db?sslmode=sometimes").is_err());
    }

    #[test]
    fn connecting_has_a_timeout_unless_the_url_sets_one() {
        let r = resolve("postgres://u:pw@h/db").unwrap();
        assert_eq!(r.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let r = resolve("postgres://u:pw@h/db?connect_timeout=3").unwrap();
        assert_eq!(
            r.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
    }
}
