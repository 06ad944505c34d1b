//! SQLite (bundled), in WAL mode: the embedded default.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OpenFlags, ToSql};

use super::user::{self, quote, Cell, Dialect, Existing, UserRow, UserTables};
use super::{fill_gaps, DeviceStats, Prepare, Rejected, RejectedStats, TelemetryRow, Written};

/// The measurements are nullable: a NaN or infinite reading is stored as
/// NULL (SQLite REAL cannot hold NaN) and named in `nonfinite`
/// (`temperature_c=NaN,battery_v=+Inf`); NULL there means all are finite.
const TELEMETRY: &str = "
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
";

/// Messages quarantined by the sink (see `pipeline::quarantine`), whichever
/// tables it stores into.
const REJECTED: &str = "
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
    /// The user's tables, when storing a schema's types.
    user: Option<Arc<UserTables>>,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path, prepare: Prepare) -> Result<Self> {
        let p = path.to_path_buf();
        let (user, create) = (prepare.user.clone(), prepare.create);
        let conn = tokio::task::spawn_blocking(move || {
            let conn = open_sync(&p)?;
            match &user {
                None => create_telemetry(&conn, &p)?,
                Some(tables) if create => create_user_tables(&conn, tables, &p)?,
                Some(_) => {}
            }
            Ok::<_, anyhow::Error>(conn)
        })
        .await??;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            user: prepare.user,
        })
    }

    /// The user's rows, each into its message type's table, in one transaction.
    pub async fn write_user(&mut self, rows: &[UserRow]) -> Result<Written> {
        let rows = rows.to_vec();
        let tables = (self.user.clone()).ok_or_else(|| anyhow!("no user tables"))?;
        let path = self.path.clone();
        self.with_conn(move |conn| {
            let (new, refused) = insert_user(conn, &tables, &rows)
                .with_context(|| format!("writing to sqlite:{}", path.display()))?;
            Ok(written(rows.len(), new, refused))
        })
        .await
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
            Ok(written(rows.len(), new, refused))
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

    /// Per device of `telemetry`, or of the user's `table`.
    pub async fn stats(&mut self, table: Option<&str>) -> Result<Vec<DeviceStats>> {
        let table = table.unwrap_or("telemetry").to_string();
        self.with_conn(move |conn| stats_sync(conn, &table)).await
    }
}

fn written(rows: usize, new: usize, refused: Vec<(usize, String)>) -> Written {
    Written {
        stored: rows - refused.len(),
        duplicates: rows - refused.len() - new,
        refused,
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
    conn.execute_batch(REJECTED)
        .with_context(|| format!("{}: cannot create the rejected table (read-only?)", what()))?;
    // Opening a read-only file succeeds; find out now, not at the first batch.
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .with_context(|| format!("{}: the database is not writable", what()))?;
    Ok(conn)
}

fn create_telemetry(conn: &Connection, path: &Path) -> Result<()> {
    let what = || format!("--sink sqlite:{}", path.display());
    conn.execute_batch(TELEMETRY)
        .with_context(|| format!("{}: cannot create the telemetry table (read-only?)", what()))?;
    add_nonfinite_column(conn)
        .with_context(|| format!("{}: cannot add the nonfinite column", what()))
}

/// Creates the user's tables, or adds the columns an existing one lacks;
/// every table is checked before anything changes, all in one transaction.
fn create_user_tables(conn: &Connection, tables: &UserTables, path: &Path) -> Result<()> {
    let what = format!("--sink sqlite:{}", path.display());
    let mut ddl = Vec::new();
    for t in &tables.tables {
        let existing = existing(conn, &t.name)?;
        if existing.columns.is_empty() {
            ddl.push(t.create_sql(Dialect::Sqlite));
            continue;
        }
        for c in user::evolve(t, &existing, Dialect::Sqlite, &what)? {
            crate::note!(
                "sink: table {}: adding column {} ({})",
                t.name,
                c.name,
                c.ty.sql(Dialect::Sqlite)
            );
            ddl.push(user::add_column_sql(&t.name, &c, Dialect::Sqlite));
        }
    }
    if ddl.is_empty() {
        return Ok(());
    }
    let sql = format!("BEGIN IMMEDIATE; {}; COMMIT;", ddl.join(";\n"));
    conn.execute_batch(&sql)
        .with_context(|| format!("{what}: cannot create or alter the tables"))
}

/// A table's columns (with their declared types) and primary key; no
/// columns when there is no such table.
fn existing(conn: &Connection, table: &str) -> Result<Existing> {
    let mut stmt = conn.prepare("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let mut cols: Vec<(String, String, i64)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Existing::default();
    cols.sort_by_key(|c| c.2);
    out.key = (cols.iter())
        .filter(|c| c.2 > 0)
        .map(|c| c.0.clone())
        .collect();
    out.columns = cols.into_iter().map(|(n, t, _)| (n, t)).collect();
    Ok(out)
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
    let done = {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO telemetry (device_id, seq, time_unix_nano, received_unix_nano, \
             temperature_c, humidity_pct, pressure_hpa, battery_v, rssi_dbm, status, nonfinite) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (device_id, seq) DO NOTHING",
        )?;
        let finite = |v: f64| v.is_finite().then_some(v);
        insert_each(rows.len(), |i| {
            let r = &rows[i];
            stmt.execute(params![
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
            ])
        })?
    };
    tx.commit()?;
    Ok(done)
}

/// Runs `exec` for rows 0..n: how many were new, and the ones refused for
/// their content with the reason (the transaction stays usable); any other
/// error ends it.
fn insert_each(
    n: usize,
    mut exec: impl FnMut(usize) -> rusqlite::Result<usize>,
) -> Result<(usize, Vec<(usize, String)>)> {
    let mut new = 0;
    let mut refused = Vec::new();
    for i in 0..n {
        match exec(i) {
            Ok(k) => new += k,
            Err(e) if row_fault(&e) => refused.push((i, format!("the store refused the row: {e}"))),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((new, refused))
}

/// A cell as SQLite takes it: a NaN or infinite float is NULL (named in
/// `nonfinite`), a bool 0/1.
struct SqlCell<'a>(&'a Cell);

impl ToSql for SqlCell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Cell::Null => ValueRef::Null,
            Cell::Int(v) => ValueRef::Integer(*v),
            Cell::Real(v) if v.is_finite() => ValueRef::Real(*v),
            Cell::Real(_) => ValueRef::Null,
            Cell::Bool(v) => ValueRef::Integer(i64::from(*v)),
            Cell::Text(s) => ValueRef::Text(s.as_bytes()),
            Cell::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

fn insert_user(
    conn: &mut Connection,
    tables: &UserTables,
    rows: &[UserRow],
) -> Result<(usize, Vec<(usize, String)>)> {
    let sql: Vec<String> = (tables.tables.iter())
        .map(|t| {
            let n = t.columns(Dialect::Sqlite).len();
            let marks = vec!["?"; n].join(", ");
            let cols = t.column_list(Dialect::Sqlite);
            format!(
                "INSERT OR IGNORE INTO {} ({cols}) VALUES ({marks})",
                quote(&t.name)
            )
        })
        .collect();
    let tx = conn.transaction()?;
    let done = insert_each(rows.len(), |i| {
        let r = &rows[i];
        let t = &tables.tables[r.table];
        let nonfinite = r.nonfinite(t);
        let cells: Vec<SqlCell> = r.cells.iter().map(SqlCell).collect();
        let mut values: Vec<&dyn ToSql> = vec![&r.device_id];
        values.extend(r.labels.iter().map(|l| l as &dyn ToSql));
        values.extend([
            &r.seq as &dyn ToSql,
            &r.time_unix_nano,
            &r.received_unix_nano,
        ]);
        values.extend(cells.iter().map(|c| c as &dyn ToSql));
        values.push(&nonfinite);
        tx.prepare_cached(&sql[r.table])?.execute(values.as_slice())
    })?;
    tx.commit()?;
    Ok(done)
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

/// Per device of `table` (`telemetry` or a user's): a missing table has none.
fn stats_sync(conn: &Connection, table: &str) -> Result<Vec<DeviceStats>> {
    if existing(conn, table)?.columns.is_empty() {
        return Ok(Vec::new());
    }
    let t = quote(table);
    let mut stmt = conn.prepare(&format!(
        "SELECT device_id, COUNT(*), MIN(seq), MAX(seq), \
         MIN(COALESCE(time_unix_nano, received_unix_nano)), \
         MAX(COALESCE(time_unix_nano, received_unix_nano)) \
         FROM {t} GROUP BY device_id ORDER BY device_id"
    ))?;
    let mut devices = stmt
        .query_map([], |r| {
            Ok(DeviceStats {
                table: None,
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
    let sql = format!("SELECT seq FROM {t} WHERE device_id = ?1 AND seq IS NOT NULL ORDER BY seq");
    for d in &mut devices {
        fill_gaps(d, |device| {
            let mut s = conn.prepare_cached(&sql)?;
            let seqs = s.query_map([device], |r| r.get::<_, i64>(0))?;
            seqs.collect::<rusqlite::Result<Vec<_>>>()
        })?;
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Prepare {
        Prepare {
            user: None,
            create: true,
        }
    }

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
        let mut s = SqliteStore::open(&dir.path().join("t.db"), builtin())
            .await
            .unwrap();
        let rows: Vec<_> = [0, 1, 2, 5, 6].into_iter().map(row).collect();
        s.write_batch(&rows).await.unwrap();
        s.write_batch(&rows[1..3]).await.unwrap(); // a redelivery
        let st = s.stats(None).await.unwrap();
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
        let mut s = SqliteStore::open(&path, builtin()).await.unwrap();
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

    /// A user's row of seq `seq` on `topic`, from the plant fixture's Metrics.
    fn user_row(tables: &UserTables, topic: &str, seq: u64) -> UserRow {
        let desc = &tables.tables[0].message;
        let json = format!(r#"{{"sequence": "{seq}", "env": {{"temperatureC": "NaN"}}}}"#);
        let payload = crate::schema::codec::encode_json(desc, &json).unwrap();
        let p = crate::mqtt::Message::new(topic, rumqttc::QoS::AtLeastOnce, payload);
        tables.row(&p).unwrap()
    }

    async fn user_store(path: &Path, tables: &Arc<UserTables>) -> SqliteStore {
        let prepare = Prepare {
            user: Some(tables.clone()),
            create: true,
        };
        SqliteStore::open(path, prepare).await.unwrap()
    }

    #[tokio::test]
    async fn user_rows_are_keyed_by_device_and_seq_and_keyless_without_a_seq() {
        let (schema, dir) = crate::schema::tests::plant_schema();
        let keyed = Arc::new(UserTables::new(schema).unwrap());
        let mut s = user_store(&dir.path().join("keyed.db"), &keyed).await;
        let rows: Vec<_> = (0..3)
            .map(|seq| user_row(&keyed, "plant/osaka/p1/metrics", seq))
            .collect();
        let w = s.write_user(&rows).await.unwrap();
        assert_eq!((w.stored, w.duplicates), (3, 0));
        let w = s.write_user(&rows).await.unwrap(); // a redelivery
        assert_eq!((w.stored, w.duplicates), (3, 3));
        s.write_user(&[user_row(&keyed, "plant/osaka/p1/metrics", 5)])
            .await
            .unwrap();
        let st = s.stats(Some("acme_plant_v1_metrics")).await.unwrap();
        assert_eq!((st[0].rows, st[0].last_seq, st[0].missing), (4, Some(5), 2));
        assert_eq!(st[0].gaps, vec![[3, 4]]);
        let flag: String = (s.conn.lock().unwrap())
            .query_row("SELECT nonfinite FROM acme_plant_v1_metrics", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(flag, "env_temperature_c=NaN");

        // --proto --message: no seq, no time, no key; a redelivery is a second row.
        let one_off = crate::schema::Schema::load(&crate::schema::SchemaSource {
            proto: vec![dir.path().join("plant.proto")],
            message: Some("acme.plant.v1.Metrics".into()),
            ..Default::default()
        })
        .unwrap();
        let keyless = Arc::new(UserTables::new(one_off).unwrap());
        let mut s = user_store(&dir.path().join("keyless.db"), &keyless).await;
        let rows = vec![user_row(&keyless, "devices/d1/telemetry", 0)];
        s.write_user(&rows).await.unwrap();
        s.write_user(&rows).await.unwrap();
        let st = s.stats(Some("acme_plant_v1_metrics")).await.unwrap();
        assert_eq!(
            (st[0].device_id.as_str(), st[0].rows, st[0].last_seq),
            ("d1", 2, None)
        );
    }

    #[tokio::test]
    async fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = SqliteStore::open(&dir.path().join("nope/t.db"), builtin())
            .await
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
    }
}
