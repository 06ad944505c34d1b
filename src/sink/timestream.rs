//! Amazon Timestream for LiveAnalytics via aws-sdk-timestreamwrite: one
//! multi-measure record per message, dimension `device_id`, the device's time
//! in ns. Region, credentials and endpoint (`AWS_ENDPOINT_URL`) come from
//! aws-config.

use anyhow::{bail, Context, Result};
use aws_sdk_timestreamwrite::types::{Dimension, MeasureValue, MeasureValueType, Record, TimeUnit};
use aws_sdk_timestreamwrite::Client;

use std::sync::Arc;

use super::user::{Cell, UserRow, UserTables};
use super::{DeviceStats, TelemetryRow, Written};

/// WriteRecords takes at most 100 records per call.
pub const MAX_RECORDS_PER_WRITE: usize = 100;
const MEASURE_NAME: &str = "telemetry";
/// Every write uses the same version, so a redelivered message either
/// matches the stored record or is refused as already there.
const VERSION: i64 = 1;

pub struct TimestreamStore {
    client: Client,
    database: String,
    table: String,
    /// The user's tables, when storing a schema's types.
    user: Option<Arc<UserTables>>,
    /// Keeps the endpoint-discovery reloader alive.
    _reloader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TimestreamStore {
    fn drop(&mut self) {
        if let Some(h) = &self._reloader {
            h.abort();
        }
    }
}

fn describe(database: &str, table: &str) -> String {
    format!("--sink timestream://{database}/{table}")
}

impl TimestreamStore {
    pub async fn open(database: &str, table: &str, user: Option<Arc<UserTables>>) -> Result<Self> {
        let what = describe(database, table);
        let conf = crate::aws::load_config(None).await;
        crate::aws::region(&conf, &what)?;
        let base = Client::new(&conf);
        // Real Timestream needs endpoint discovery; an explicit endpoint
        // (AWS_ENDPOINT_URL, e.g. a local emulator) is used as given.
        let (client, reloader) = if conf.endpoint_url().is_some() {
            (base, None)
        } else {
            let (c, r) = base
                .with_endpoint_discovery_enabled()
                .await
                .map_err(|e| anyhow::anyhow!("{what}: endpoint discovery failed: {e}"))?;
            (c, Some(tokio::spawn(r.reload_task())))
        };
        let store = TimestreamStore {
            client,
            database: database.to_string(),
            table: table.to_string(),
            user,
            _reloader: reloader,
        };
        store.ensure_table().await.with_context(|| what.clone())?;
        Ok(store)
    }

    /// Creates the database and table when they are missing.
    async fn ensure_table(&self) -> Result<()> {
        let found = self
            .client
            .describe_database()
            .database_name(&self.database)
            .send()
            .await;
        match found {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                tracing::info!("creating Timestream database {}", self.database);
                self.client
                    .create_database()
                    .database_name(&self.database)
                    .send()
                    .await
                    .map_err(|e| sdk_error("creating the database", e))?;
            }
            Err(e) => return Err(sdk_error("cannot reach Timestream", e)),
        }
        let found = self
            .client
            .describe_table()
            .database_name(&self.database)
            .table_name(&self.table)
            .send()
            .await;
        match found {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                tracing::info!("creating Timestream table {}", self.table);
                self.client
                    .create_table()
                    .database_name(&self.database)
                    .table_name(&self.table)
                    .send()
                    .await
                    .map_err(|e| sdk_error("creating the table", e))?;
                Ok(())
            }
            Err(e) => Err(sdk_error("describing the table", e)),
        }
    }

    pub async fn write_batch(&mut self, rows: &[TelemetryRow]) -> Result<Written> {
        let records = rows.iter().map(record).collect::<Result<Vec<_>>>()?;
        self.write_records(records).await
    }

    /// The user's rows, one record each, measure name = its table's name.
    pub async fn write_user(&mut self, rows: &[UserRow]) -> Result<Written> {
        let tables = (self.user.clone()).ok_or_else(|| anyhow::anyhow!("no user tables"))?;
        let records = (rows.iter())
            .map(|r| user_record(&tables, r))
            .collect::<Result<Vec<_>>>()?;
        self.write_records(records).await
    }

    async fn write_records(&mut self, records: Vec<Record>) -> Result<Written> {
        let mut written = Written::default();
        for (n, chunk) in records.chunks(MAX_RECORDS_PER_WRITE).enumerate() {
            let offset = n * MAX_RECORDS_PER_WRITE;
            let res = self
                .client
                .write_records()
                .database_name(&self.database)
                .table_name(&self.table)
                .set_records(Some(chunk.to_vec()))
                .send()
                .await;
            match res {
                Ok(_) => written.stored += chunk.len(),
                Err(e) => {
                    let Some(rej) = e
                        .as_service_error()
                        .filter(|s| s.is_rejected_records_exception())
                    else {
                        return Err(sdk_error("WriteRecords failed", e));
                    };
                    let list = match rej {
                        aws_sdk_timestreamwrite::operation::write_records::WriteRecordsError::RejectedRecordsException(r) => r.rejected_records().to_vec(),
                        _ => Vec::new(),
                    };
                    account_rejections(&mut written, offset, chunk.len(), &list);
                }
            }
        }
        Ok(written)
    }

    pub async fn stats(&mut self) -> Result<Vec<DeviceStats>> {
        bail!(
            "sink stats: reading back from Timestream needs the Timestream Query API, which mqttkit does not use; query it with e.g. SELECT device_id, count(*), min(seq), max(seq) FROM \"{}\".\"{}\" GROUP BY device_id",
            self.database,
            self.table
        )
    }
}

/// A WriteRecords call that rejected some of a chunk's `len` records: those
/// already stored (same version) are duplicates, the others refused rows.
fn account_rejections(
    written: &mut Written,
    offset: usize,
    len: usize,
    list: &[aws_sdk_timestreamwrite::types::RejectedRecord],
) {
    let mut refused = 0;
    for r in list {
        if r.existing_version().is_some() {
            written.duplicates += 1;
            continue;
        }
        refused += 1;
        let reason = r.reason().unwrap_or("no reason given");
        let i = usize::try_from(r.record_index()).unwrap_or(usize::MAX);
        if i < len {
            let why = format!("Timestream rejected the record: {reason}");
            written.refused.push((offset + i, why));
        } else {
            crate::note!("warning: Timestream rejected record {i}: {reason}");
        }
    }
    written.stored += len - refused;
}

fn sdk_error<E, R>(what: &str, e: aws_sdk_timestreamwrite::error::SdkError<E, R>) -> anyhow::Error
where
    E: aws_sdk_timestreamwrite::error::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("no message")
        ),
        None => aws_sdk_timestreamwrite::error::DisplayErrorContext(&e).to_string(),
    };
    anyhow::anyhow!("{what}: {detail}")
}

fn measure(name: &str, value: String, t: MeasureValueType) -> Result<MeasureValue> {
    Ok(MeasureValue::builder()
        .name(name)
        .value(value)
        .r#type(t)
        .build()?)
}

fn dimension(name: &str, value: &str) -> Result<Dimension> {
    Ok(Dimension::builder().name(name).value(value).build()?)
}

/// One multi-measure record for a user's row: dimensions device_id and the
/// labels, measures `seq`, `received_unix_nano` and the numbers and booleans
/// (a NaN/±Inf one left out and named in `nonfinite`); the device's time
/// (else the received time).
pub fn user_record(tables: &UserTables, r: &UserRow) -> Result<Record> {
    let t = &tables.tables[r.table];
    let mut dims = vec![dimension("device_id", &r.device_id)?];
    for ((_, column), value) in t.labels.iter().zip(&r.labels) {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            dims.push(dimension(column, v)?);
        }
    }
    let big = MeasureValueType::Bigint;
    let mut measures = vec![measure(
        "received_unix_nano",
        r.received_unix_nano.to_string(),
        big.clone(),
    )?];
    if let Some(seq) = r.seq {
        measures.push(measure("seq", seq.to_string(), big.clone())?);
    }
    for (c, cell) in t.fields.iter().zip(&r.cells) {
        let (value, ty) = match cell {
            Cell::Int(v) => (v.to_string(), big.clone()),
            Cell::Real(v) if v.is_finite() => (v.to_string(), MeasureValueType::Double),
            Cell::Bool(v) => (v.to_string(), MeasureValueType::Boolean),
            _ => continue,
        };
        measures.push(measure(&c.name, value, ty)?);
    }
    if let Some(flag) = r.nonfinite(t) {
        measures.push(measure("nonfinite", flag, MeasureValueType::Varchar)?);
    }
    Ok(Record::builder()
        .set_dimensions(Some(dims))
        .measure_name(&t.name)
        .measure_value_type(MeasureValueType::Multi)
        .set_measure_values(Some(measures))
        .time(r.time_or_received().to_string())
        .time_unit(TimeUnit::Nanoseconds)
        .version(VERSION)
        .build())
}

/// One multi-measure record for `r`; non-finite readings are left out
/// (named in the `nonfinite` measure).
pub fn record(r: &TelemetryRow) -> Result<Record> {
    let mv = measure;
    let mut measures = vec![
        mv("seq", r.seq.to_string(), MeasureValueType::Bigint)?,
        mv(
            "received_unix_nano",
            r.received_unix_nano.to_string(),
            MeasureValueType::Bigint,
        )?,
        mv("rssi_dbm", r.rssi_dbm.to_string(), MeasureValueType::Bigint)?,
        mv("status", r.status.clone(), MeasureValueType::Varchar)?,
    ];
    for (name, v) in r.float_measures() {
        if v.is_finite() {
            measures.push(mv(name, v.to_string(), MeasureValueType::Double)?);
        }
    }
    // Timestream's DOUBLE has no NaN or infinity: left out, and named here.
    if let Some(flag) = r.nonfinite() {
        measures.push(mv("nonfinite", flag, MeasureValueType::Varchar)?);
    }
    Ok(Record::builder()
        .dimensions(dimension("device_id", &r.device_id)?)
        .measure_name(MEASURE_NAME)
        .measure_value_type(MeasureValueType::Multi)
        .set_measure_values(Some(measures))
        .time(r.time_unix_nano.to_string())
        .time_unit(TimeUnit::Nanoseconds)
        .version(VERSION)
        .build())
}
