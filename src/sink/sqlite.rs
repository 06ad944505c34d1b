//! SQLite (bundled), in WAL mode: the embedded default.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection, OpenFlags};

use super::{gaps_of, DeviceStats, Rejected, RejectedStats, TelemetryRow, Written};

/// The measurements are nullable: a NaN or infinite reading is stored as
/// NULL (SQLite REAL cannot hold NaN) and named in `nonfinite`
/// (`temperature_c=NaN,battery_v=+Inf`); NULL there means all are finite.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_unix_nano INTEGER NOT NULL,
    received_unix_nano INTEGER NOT NULL,
    temperature_c REAL,
    humidity_pct REAL,
    pressure_hpa REAL,
    battery_v REAL,
    rssi_dbm INTEGER NOT NULL,
    status TEXT NOT NULL,
    nonfinite TEXT,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS telemetry_time ON telemetry (time_unix_nano);
CREATE TABLE IF NOT EXISTS rejected (
    received_unix_nano INTEGER NOT NULL,
    topic TEXT NOT NULL,
    device_id TEXT,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_truncated INTEGER NOT NULL,
    payload_sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_device ON rejected (device_id);
";

pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let p = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || open_sync(&p)).await??;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub async fn write_batch(&mut self, rows: &[TelemetryRow]) -> Result<Written> {
        let rows = rows.to_vec();
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| anyhow!("sqlite connection poisoned"))?;
            let (new, refused) = insert(&mut conn, &rows)
                .with_context(|| format!("writing to sqlite:{}", path.display()))?;
            Ok(Written {
                stored: rows.len() - refused.len(),
                duplicates: rows.len() - refused.len() - new,
                refused,
            })
        })
        .await?
    }

    pub async fn quarantine(&mut self, rejected: &[Rejected]) -> Result<()> {
        let rejected = rejected.to_vec();
        let path = self.path.clone();
        self.with_conn(move |conn| {
            insert_rejected(conn, &rejected)
                .with_context(|| format!("writing to sqlite:{} (rejected)", path.display()))
        })
        .await
    }

    pub async fn rejected_stats(&mut self) -> Result<Vec<RejectedStats>> {
        self.with_conn(|conn| rejected_stats_sync(conn)).await
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| anyhow!("sqlite connection poisoned"))?;
            f(&mut conn)
        })
        .await?
    }

    pub async fn stats(&mut self) -> Result<Vec<DeviceStats>> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| anyhow!("sqlite connection poisoned"))?;
            stats_sync(&conn)
        })
        .await?
    }
}

fn open_sync(path: &Path) -> Result<Connection> {
    let what = || format!("--sink sqlite:{}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            anyhow::bail!(
                "{}: directory {} does not exist; create it or choose another path",
                what(),
                dir.display()
            );
        }
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        // SQLite's own text repeats itself ("unable to open database file: ...: Error code 14: ...").
        let why = match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::CannotOpen => {
                "cannot create or open the file there (read-only or not a regular filesystem)"
                    .to_string()
            }
            other => other.to_string(),
        };
        anyhow::anyhow!("{}: {why}; choose a writable path", what())
    })?;
    // WAL + synchronous=NORMAL: a commit survives a process crash (the case
    // acknowledgements guard against) and costs no fsync per batch.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .with_context(|| format!("{}: cannot open the database for writing", what()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        anyhow::bail!("{}: could not switch to WAL mode (got {mode})", what());
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("{}: cannot create the telemetry table (read-only?)", what()))?;
    add_nonfinite_column(&conn)
        .with_context(|| format!("{}: cannot add the nonfinite column", what()))?;
    // Opening a read-only file succeeds; find out now, not at the first batch.
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .with_context(|| format!("{}: the database is not writable", what()))?;
    Ok(conn)
}

/// A table made before NaN was stored lacks `nonfinite` (and has NOT NULL
/// measurements: a NaN reading there is refused and quarantined).
fn add_nonfinite_column(conn: &Connection) -> Result<()> {
    let mut stmt =
        conn.prepare("SELECT 1 FROM pragma_table_info('telemetry') WHERE name = 'nonfinite'")?;
    if !stmt.exists([])? {
        conn.execute_batch("ALTER TABLE telemetry ADD COLUMN nonfinite TEXT")?;
    }
    Ok(())
}

/// Whether an error is the row's own fault (a constraint, a value too big or
/// of the wrong type), as opposed to the database's (busy, I/O, full).
fn row_fault(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{ConstraintViolation, TooBig, TypeMismatch};
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            matches!(f.code, ConstraintViolation | TooBig | TypeMismatch)
        }
        rusqlite::Error::ToSqlConversionFailure(_) => true,
        _ => false,
    }
}

/// Inserts what is not there yet, in one transaction; a row refused for its
/// content is left out (a failed statement leaves the transaction usable).
/// Returns how many rows were new, and the refused ones with the reason.
fn insert(conn: &mut Connection, rows: &[TelemetryRow]) -> Result<(usize, Vec<(usize, String)>)> {
    let tx = conn.transaction()?;
    let mut new = 0;
    let mut refused = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO telemetry (device_id, seq, time_unix_nano, received_unix_nano, \
             temperature_c, humidity_pct, pressure_hpa, battery_v, rssi_dbm, status, nonfinite) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (device_id, seq) DO NOTHING",
        )?;
        let finite = |v: f64| v.is_finite().then_some(v);
        for (i, r) in rows.iter().enumerate() {
            let done = stmt.execute(params![
                r.device_id,
                r.seq,
                r.time_unix_nano,
                r.received_unix_nano,
                finite(r.temperature_c),
                finite(r.humidity_pct),
                finite(r.pressure_hpa),
                finite(r.battery_v),
                r.rssi_dbm,
                r.status,
                r.nonfinite()
            ]);
            match done {
                Ok(n) => new += n,
                Err(e) if row_fault(&e) => {
                    refused.push((i, format!("the store refused the row: {e}")))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    tx.commit()?;
    Ok((new, refused))
}

fn insert_rejected(conn: &mut Connection, rejected: &[Rejected]) -> Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO rejected (received_unix_nano, topic, device_id, size, reason, \
             payload, payload_truncated, payload_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for r in rejected {
            stmt.execute(params![
                r.received_unix_nano,
                r.topic,
                r.device_id,
                r.size as i64,
                r.reason,
                r.payload,
                r.truncated,
                r.sha256
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn rejected_stats_sync(conn: &Connection) -> Result<Vec<RejectedStats>> {
    let mut stmt = conn.prepare(
        "SELECT COALESCE(device_id, ''), COUNT(*), \
         (SELECT reason FROM rejected l WHERE l.device_id IS r.device_id \
          ORDER BY received_unix_nano DESC LIMIT 1) \
         FROM rejected r GROUP BY device_id ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RejectedStats {
            device_id: r.get(0)?,
            rejected: r.get::<_, i64>(1)? as u64,
            last_reason: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn stats_sync(conn: &Connection) -> Result<Vec<DeviceStats>> {
    let mut stmt = conn.prepare(
        "SELECT device_id, COUNT(*), MIN(seq), MAX(seq), MIN(time_unix_nano), MAX(time_unix_nano) \
         FROM telemetry GROUP BY device_id ORDER BY device_id",
    )?;
    let mut devices = stmt
        .query_map([], |r| {
            Ok(DeviceStats {
                device_id: r.get(0)?,
                rows: r.get::<_, i64>(1)? as u64,
                first_seq: r.get(2)?,
                last_seq: r.get(3)?,
                first_time_unix_nano: r.get(4)?,
                last_time_unix_nano: r.get(5)?,
                missing: 0,
                gaps: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for d in &mut devices {
        d.missing = (d.last_seq + 1).max(0) as u64 - d.rows;
        if d.missing > 0 {
            let mut s =
                conn.prepare_cached("SELECT seq FROM telemetry WHERE device_id = ?1 ORDER BY seq")?;
            let seqs = s
                .query_map([&d.device_id], |r| r.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            d.gaps = gaps_of(seqs);
        }
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64) -> TelemetryRow {
        TelemetryRow {
            device_id: "d1".into(),
            seq,
            time_unix_nano: 1_000 + seq,
            received_unix_nano: 2_000 + seq,
            temperature_c: 20.0,
            humidity_pct: 40.0,
            pressure_hpa: 1000.0,
            battery_v: 3.7,
            rssi_dbm: -50,
            status: "OK".into(),
        }
    }

    #[tokio::test]
    async fn idempotent_writes_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let rows: Vec<_> = [0, 1, 2, 5, 6].into_iter().map(row).collect();
        s.write_batch(&rows).await.unwrap();
        s.write_batch(&rows[1..3]).await.unwrap(); // a redelivery
        let st = s.stats().await.unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!((st[0].rows, st[0].missing), (5, 2));
        assert_eq!(st[0].gaps, vec![[3, 4]]);
        assert_eq!(
            (st[0].first_time_unix_nano, st[0].last_time_unix_nano),
            (1000, 1006)
        );
    }

    #[tokio::test]
    async fn nan_is_null_with_a_flag_and_a_refused_row_does_not_fail_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        // An operator's own rule on an existing table: rssi must be plausible.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE telemetry (device_id TEXT NOT NULL, seq INTEGER NOT NULL, \
                 time_unix_nano INTEGER NOT NULL, received_unix_nano INTEGER NOT NULL, \
                 temperature_c REAL NOT NULL, humidity_pct REAL, pressure_hpa REAL, battery_v REAL, \
                 rssi_dbm INTEGER NOT NULL CHECK (rssi_dbm > -500), status TEXT NOT NULL, \
                 PRIMARY KEY (device_id, seq)) WITHOUT ROWID",
            )
            .unwrap();
        let mut s = SqliteStore::open(&path).await.unwrap();
        let mut rows: Vec<_> = (0..4).map(row).collect();
        rows[1].humidity_pct = f64::NAN;
        rows[1].battery_v = f64::INFINITY;
        rows[2].rssi_dbm = -9999;
        rows[3].temperature_c = f64::NAN; // NOT NULL in this old table
        let w = s.write_batch(&rows).await.unwrap();
        assert_eq!(w.stored, 2);
        let refused: Vec<usize> = w.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, [2, 3]);
        assert!(w.refused[0].1.contains("CHECK"), "{:?}", w.refused);
        let conn = Connection::open(&path).unwrap();
        let (hum, flag): (Option<f64>, String) = conn
            .query_row(
                "SELECT humidity_pct, nonfinite FROM telemetry WHERE seq = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (hum, flag.as_str()),
            (None, "humidity_pct=NaN,battery_v=+Inf")
        );
    }

    #[tokio::test]
    async fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = SqliteStore::open(&dir.path().join("nope/t.db"))
            .await
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
    }
}
