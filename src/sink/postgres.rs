//! PostgreSQL via tokio-postgres: one table keyed by (device_id, seq), with a
//! time index; a TimescaleDB hypertable when that extension is installed.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use super::{gaps_of, redact, DeviceStats, TelemetryRow, Written};

pub struct PgStore {
    url: String,
    client: Client,
    conn_task: tokio::task::JoinHandle<()>,
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

async fn log_end<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::warn!("postgres connection ended: {e}");
    }
}

/// tokio-postgres's settings from the URL, plus what it does not know and
/// libpq users write: `sslrootcert=FILE` and `sslmode=verify-ca|verify-full`.
/// Every TLS mode verifies the certificate and the host name (libpq's
/// verify-full); `disable`/`prefer` (the default) connect without TLS.
fn connection_config(url: &str) -> Result<(Config, Option<PathBuf>), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut rootcert = None;
    // Untouched parameters are passed on exactly as written.
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(key).as_str(), decode(value).as_str()) {
            ("sslrootcert", path) => rootcert = Some(PathBuf::from(path)),
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
    Ok((config, rootcert))
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

impl PgStore {
    pub async fn open(url: &str) -> Result<Self> {
        let what = || format!("--sink {}", redact(url));
        let (config, rootcert) = connection_config(url).map_err(|e| anyhow!("{}: {e}", what()))?;
        let plain = config.get_ssl_mode() != SslMode::Require;
        let cannot_connect = |e: tokio_postgres::Error| {
            let hint = tls_hint(plain, e.code());
            // The server's words are in the error's source ("db error: FATAL: ...").
            let e = anyhow::Error::new(e);
            anyhow!("{}: cannot connect: {e:#}{hint}", what())
        };
        let (client, conn_task) = if config.get_ssl_mode() == SslMode::Require {
            let tls = tls_config(rootcert.as_ref()).map_err(|e| anyhow!("{}: {e}", what()))?;
            let (client, conn) = config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(cannot_connect)?;
            (client, tokio::spawn(log_end(conn)))
        } else {
            let (client, conn) = config.connect(NoTls).await.map_err(cannot_connect)?;
            (client, tokio::spawn(log_end(conn)))
        };
        let store = PgStore {
            url: url.to_string(),
            client,
            conn_task,
        };
        store
            .create_schema()
            .await
            .with_context(|| format!("{}: cannot create the telemetry table", what()))?;
        Ok(store)
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

    pub async fn write_batch(&mut self, rows: &[TelemetryRow]) -> Result<Written> {
        // One statement per batch: arrays unnested server-side.
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
        let new = self
            .client
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
            .with_context(|| format!("writing to {}", redact(&self.url)))?;
        Ok(Written {
            stored: rows.len(),
            duplicates: rows.len().saturating_sub(new as usize),
            rejected: 0,
        })
    }

    pub async fn stats(&mut self) -> Result<Vec<DeviceStats>> {
        let rows = self
            .client
            .query(
                "SELECT device_id, COUNT(*), MIN(seq), MAX(seq), MIN(time_unix_nano), \
                 MAX(time_unix_nano) FROM telemetry GROUP BY device_id ORDER BY device_id",
                &[],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let rows: i64 = r.get(1);
            let last_seq: i64 = r.get(3);
            let mut d = DeviceStats {
                device_id: r.get(0),
                rows: rows as u64,
                first_seq: r.get(2),
                last_seq,
                first_time_unix_nano: r.get(4),
                last_time_unix_nano: r.get(5),
                missing: ((last_seq + 1).max(0) - rows).max(0) as u64,
                gaps: Vec::new(),
            };
            if d.missing > 0 {
                let seqs = self
                    .client
                    .query(
                        "SELECT seq FROM telemetry WHERE device_id = $1 ORDER BY seq",
                        &[&d.device_id],
                    )
                    .await?;
                d.gaps = gaps_of(seqs.iter().map(|r| r.get::<_, i64>(0)));
            }
            out.push(d);
        }
        Ok(out)
    }
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
        let (c, root) = connection_config("postgres://u@h:5433/db").unwrap();
        assert_eq!((c.get_ssl_mode(), root), (SslMode::Prefer, None));

        let (c, root) = connection_config(
            "postgres://u:p%40ss@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&application_name=a%20b",
        )
        .unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(root, Some(PathBuf::from("/etc/ca.crt")));
        assert_eq!(c.get_application_name(), Some("a b"));
        assert_eq!(c.get_password(), Some(&b"p@ss"[..]));

        let e = connection_config("postgres://u@h/db?sslrootcert=ca.crt").unwrap_err();
        assert!(e.contains("sslmode=require"), "{e}");
        assert!(connection_config("postgres://u@h/db?sslmode=sometimes").is_err());
    }
}
