//! PostgreSQL via tokio-postgres: one table keyed by (device_id, seq), with a
//! time index; a TimescaleDB hypertable when that extension is installed.

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

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

impl PgStore {
    pub async fn open(url: &str) -> Result<Self> {
        let what = || format!("--sink {}", redact(url));
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("{}: cannot connect", what()))?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!("postgres connection ended: {e}");
            }
        });
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
