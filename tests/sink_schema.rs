//! `sub telemetry --schema F --sink URL`: the user's own message
//! (tests/proto/plant.proto on `plant/{site}/{device}/metrics`) into its own
//! table of SQLite, PostgreSQL and InfluxDB, against a real mosquitto and real
//! stores: every row once across a SIGKILL, typed columns, and the table
//! evolving with the .proto.

mod common;
mod sink_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions};
use sink_support::{kill_restart_flow_of, Influx, Moto, Postgres, Publisher, SinkProc};

const TABLE: &str = "acme_plant_v1_metrics";
const TOPIC: &str = "plant/osaka/pump-a/metrics";
const PLANT: &str = include_str!("proto/plant.proto");
/// What the evolved .proto adds and removes.
const ADDED: &str = "  reserved 11;\n  double flow_lpm = 12;\n";
const REMOVED: &str = "  bool maintenance = 11;\n";

/// plant.proto and its schema file in `dir`; the schema's path.
fn write_schema(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("plant.proto"), PLANT).unwrap();
    let path = dir.join("schema.toml");
    std::fs::write(&path, include_str!("proto/plant.toml")).unwrap();
    path
}

/// A broker whose ACL follows the plant schema, with device pump-a.
fn plant_broker(schema: &Path) -> Broker {
    Broker::start_with(BrokerOptions {
        clients: vec!["pump-a".into()],
        up_args: vec!["--schema".into(), schema.display().to_string()],
        ..Default::default()
    })
}

const PUMP_A: Publisher = Publisher {
    args: &["--device-id", "pump-a", "--label", "site=osaka"],
    rate: 1000,
    device: "pump-a",
};

/// `pub telemetry` of `n` more messages from seq `start`.
fn publish(b: &Broker, env: &[(&str, &str)], start: u64, n: u64) {
    let mut c = b.mqttkit();
    c.args(["pub", "telemetry", "--qos", "1"])
        .args(PUMP_A.args)
        .args(["--count", &n.to_string(), "--start-seq", &start.to_string()])
        .envs(env.iter().copied());
    common::ok(&common::run(&mut c, Duration::from_secs(60)));
}

fn wait_for(
    b: &Broker,
    url: &str,
    env: &[(&str, &str)],
    sink: &SinkProc,
    rows: u64,
    rejected: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = sink_support::stats(b, url, env);
        if s["rows"] == rows && s["rejected"] == rejected {
            return;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", sink.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After the first 2,000 rows: a field added to the .proto and one removed;
/// the restarted sink adds the column, keeps the old one and the old rows,
/// and quarantines a payload that is not a Metrics. `query` runs SQL and
/// returns its first row as `a|b|c`.
fn evolution_flow(
    b: &Broker,
    url: &str,
    env: &[(&str, &str)],
    dir: &Path,
    query: &dyn Fn(&str) -> String,
) {
    let evolved = PLANT.replace(REMOVED, ADDED);
    assert_ne!(evolved, PLANT);
    std::fs::write(dir.join("plant.proto"), evolved).unwrap();
    let mut sink = SinkProc::start(b, url, &[], env);
    sink.wait_subscribed();
    assert!(
        sink.stderr().contains("adding column flow_lpm"),
        "{}",
        sink.stderr()
    );
    common::ok(&common::run(
        Command::new("mosquitto_pub")
            .args(common::mosquitto_tls_args(b, Some("pump-a")))
            .args(["-q", "1", "-t", TOPIC, "-m", "\u{1}not a Metrics"]),
        Duration::from_secs(30),
    ));
    publish(b, env, 2000, 100);
    wait_for(b, url, env, &sink, 2100, 1);
    sink.terminate();
    let t = TABLE;
    assert_eq!(
        query(&format!(
            "SELECT count(*), count(flow_lpm), count(maintenance) FROM {t}"
        )),
        "2100|100|2000"
    );
    assert_eq!(
        query(&format!(
            "SELECT min(seq) FROM {t} WHERE flow_lpm IS NOT NULL"
        )),
        "2000"
    );
    assert_eq!(
        query("SELECT count(*) FROM rejected WHERE device_id = 'pump-a'"),
        "1"
    );
}

/// A field whose type changed (and one added beside it): a one-line error
/// naming table, column and both types, exit non-zero before subscribing,
/// and no column added.
fn changed_type_flow(
    b: &Broker,
    url: &str,
    env: &[(&str, &str)],
    dir: &Path,
    old_type: &str,
    new_type: &str,
) {
    let changed = PLANT.replace(REMOVED, ADDED).replace(
        "int32 rssi_dbm = 10;",
        "string rssi_dbm = 10;\n  double pressure_kpa = 13;",
    );
    std::fs::write(dir.join("plant.proto"), changed).unwrap();
    let mut c = b.mqttkit();
    c.args(["sub", "telemetry", "--sink", url])
        .envs(env.iter().copied());
    let o = common::run(&mut c, Duration::from_secs(60));
    let err = common::stderr(&o);
    assert!(!o.status.success(), "{err}");
    let says = format!(
        "table {TABLE} column rssi_dbm is {old_type}, but acme.plant.v1.Metrics.rssi_dbm is now string ({new_type}); give the changed field a new name"
    );
    assert!(err.contains(&says), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("subscribed"), "{err}");
}

#[test]
fn sqlite_stores_the_users_message_once_across_sigkill_and_evolves_with_the_proto() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_schema(tmp.path());
    let b = plant_broker(&schema);
    let db = b.path().join("plant.db");
    let url = format!("sqlite:{}", db.display());
    let env = [("MQTTKIT_SCHEMA", schema.to_str().unwrap())];
    kill_restart_flow_of(&b, &url, 2000, &env, &PUMP_A);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT name, type FROM pragma_table_info('{TABLE}')"
        ))
        .unwrap();
    let cols: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (name, ty) in [
        ("device_id", "TEXT"),
        ("site", "TEXT"),
        ("seq", "INTEGER"),
        ("time_unix_nano", "INTEGER"),
        ("received_unix_nano", "INTEGER"),
        ("msg_site", "TEXT"),
        ("env_temperature_c", "REAL"),
        ("env_humidity_pct", "REAL"),
        ("tags", "JSON"),
        ("limits", "JSON"),
        ("state", "TEXT"),
        ("error", "TEXT"),
        ("ok_code", "INTEGER"),
        ("rssi_dbm", "INTEGER"),
        ("maintenance", "BOOLEAN"),
    ] {
        assert!(
            cols.contains(&(name.into(), ty.into())),
            "{name} {ty}: {cols:?}"
        );
    }
    let query = |sql: &str| sqlite_row(&conn, sql);
    assert_eq!(
        query(&format!(
            "SELECT device_id, site, msg_site, state, tags, json_extract(limits, '$.a') > 0, error, \
             ok_code IS NULL, typeof(env_temperature_c), maintenance FROM {TABLE} WHERE seq = 6"
        )),
        "pump-a|osaka|pump-a-site|STATE_RUNNING|[\"pump-a-tags\"]|1|pump-a-error|1|real|1"
    );
    // The device time is the message's sampled_at, just before it was received.
    assert_eq!(
        query(&format!(
            "SELECT count(*) FROM {TABLE} WHERE time_unix_nano > 1700000000000000000 \
             AND received_unix_nano - time_unix_nano BETWEEN -1000000000 AND 60000000000"
        )),
        "2000"
    );
    let builtin = query("SELECT count(*) FROM sqlite_master WHERE name = 'telemetry'");
    assert_eq!(builtin, "0", "the built-in table is not made");

    evolution_flow(&b, &url, &env, tmp.path(), &query);
    changed_type_flow(&b, &url, &env, tmp.path(), "INTEGER", "TEXT");
    assert_eq!(
        query(&format!(
            "SELECT count(*) FROM pragma_table_info('{TABLE}') WHERE name = 'pressure_kpa'"
        )),
        "0"
    );

    // sink stats as text names the table.
    std::fs::write(
        tmp.path().join("plant.proto"),
        PLANT.replace(REMOVED, ADDED),
    )
    .unwrap();
    let o = common::run(
        b.mqttkit().args(["sink", "stats", &url]).envs(env),
        Duration::from_secs(30),
    );
    let text = common::stdout(common::ok(&o));
    assert!(text.contains("2100 rows, 1 devices, 1 rejected"), "{text}");
    assert!(text.contains(&format!("{TABLE}  pump-a")), "{text}");
}

/// The first row of `sql`, its values joined by `|` (as `psql -A -t`).
fn sqlite_row(conn: &rusqlite::Connection, sql: &str) -> String {
    use rusqlite::types::Value;
    conn.query_row(sql, [], |r| {
        let n = r.as_ref().column_count();
        let vals: Vec<String> = (0..n)
            .map(|i| match r.get::<_, Value>(i).unwrap() {
                Value::Null => String::new(),
                Value::Integer(v) => v.to_string(),
                Value::Real(v) => v.to_string(),
                Value::Text(s) => s,
                Value::Blob(b) => format!("{b:?}"),
            })
            .collect();
        Ok(vals.join("|"))
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn postgres_stores_the_users_message_once_across_sigkill_and_evolves_with_the_proto() {
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_schema(tmp.path());
    let b = plant_broker(&schema);
    let url = pg.url("postgres");
    let env = [("MQTTKIT_SCHEMA", schema.to_str().unwrap())];
    kill_restart_flow_of(&b, &url, 2000, &env, &PUMP_A);

    let types = pg.psql(
        "postgres",
        &format!(
            "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_name = '{TABLE}'"
        ),
    );
    assert_eq!(
        types,
        "device_id text, site text, seq bigint, time_unix_nano bigint, received_unix_nano bigint, \
         msg_site text, env_temperature_c double precision, env_humidity_pct double precision, \
         tags jsonb, limits jsonb, state text, error text, ok_code bigint, rssi_dbm bigint, maintenance boolean"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            &format!(
                "SELECT device_id, site, state, tags->>0, limits ? 'a', error, ok_code IS NULL \
                 FROM {TABLE} WHERE seq = 6"
            )
        ),
        "pump-a|osaka|STATE_RUNNING|pump-a-tags|t|pump-a-error|t"
    );
    let key = pg.psql(
        "postgres",
        &format!("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '{TABLE}'::regclass AND contype = 'p'"),
    );
    assert_eq!(key, "PRIMARY KEY (device_id, seq)");
    assert_eq!(
        pg.psql("postgres", "SELECT to_regclass('telemetry') IS NULL"),
        "t"
    );

    let query = |sql: &str| pg.psql("postgres", sql);
    evolution_flow(&b, &url, &env, tmp.path(), &query);
    changed_type_flow(&b, &url, &env, tmp.path(), "bigint", "text");
    let kpa = format!("SELECT count(*) FROM information_schema.columns WHERE table_name = '{TABLE}' AND column_name = 'pressure_kpa'");
    assert_eq!(query(&kpa), "0");
}

#[test]
fn influx_gets_a_measurement_per_type_with_labels_as_tags_and_numbers_as_fields() {
    let influx = Influx::start();
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_schema(tmp.path());
    let b = plant_broker(&schema);
    let url = format!("influx://127.0.0.1:{}/plant", influx.port);
    let env = [("MQTTKIT_SCHEMA", schema.to_str().unwrap())];
    // The flag this time (the other tests take MQTTKIT_SCHEMA).
    let mut sink = SinkProc::start(&b, &url, &["--schema", schema.to_str().unwrap()], &[]);
    sink.wait_subscribed();
    publish(&b, &env, 0, 300);
    wait_for(&b, &url, &env, &sink, 300, 0);
    sink.terminate();

    let v = influx.query(
        "plant",
        &format!("SHOW TAG KEYS FROM {TABLE}; SHOW FIELD KEYS FROM {TABLE}"),
    );
    let tags = &v["results"][0]["series"][0]["values"];
    assert_eq!(tags, &serde_json::json!([["device_id"], ["site"]]), "{v}");
    let fields: Vec<(String, String)> = (v["results"][1]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter())
    .map(|f| (f[0].as_str().unwrap().into(), f[1].as_str().unwrap().into()))
    .collect();
    let want = [
        ("env_humidity_pct", "float"),
        ("env_temperature_c", "float"),
        ("maintenance", "boolean"),
        ("received_unix_nano", "integer"),
        ("rssi_dbm", "integer"),
        ("seq", "integer"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(
        fields, want,
        "numbers and booleans only (no text, JSON, or unset oneof member)"
    );
    let v = influx.query(
        "plant",
        &format!("SELECT count(seq), min(seq), max(seq) FROM {TABLE} GROUP BY device_id, site"),
    );
    let s = &v["results"][0]["series"][0];
    assert_eq!(
        s["tags"],
        serde_json::json!({"device_id": "pump-a", "site": "osaka"}),
        "{v}"
    );
    assert_eq!(
        s["values"][0].as_array().unwrap()[1..],
        [300, 0, 299].map(serde_json::Value::from),
        "{v}"
    );
    // Point time = the device's sampled_at, not when the sink received it.
    let v = influx.query(
        "plant",
        &format!("SELECT received_unix_nano FROM {TABLE} LIMIT 50"),
    );
    for row in v["results"][0]["series"][0]["values"].as_array().unwrap() {
        let (t, received) = (row[0].as_i64().unwrap(), row[1].as_i64().unwrap());
        assert!(
            t > 1_700_000_000_000_000_000 && t < received && received - t < 60_000_000_000,
            "{row}"
        );
    }
}

#[test]
fn timestream_gets_records_with_labels_as_dimensions_and_numbers_as_measures() {
    let mut moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_schema(tmp.path());
    let b = plant_broker(&schema);
    let moto_env = moto.env();
    let mut env: Vec<(&str, &str)> = (moto_env.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("MQTTKIT_SCHEMA", schema.to_str().unwrap()));
    let mut sink = SinkProc::start(&b, "timestream://iot/plant", &["--batch-ms", "50"], &env);
    sink.wait_subscribed();
    publish(&b, &env, 0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let dump = loop {
        let d = moto.dump();
        if d["records"]["iot/plant"].as_array().map_or(0, Vec::len) >= 200 {
            break d;
        }
        assert!(Instant::now() < deadline, "{d}\n{}", sink.stderr());
        std::thread::sleep(Duration::from_millis(100));
    };
    sink.terminate();
    let records = dump["records"]["iot/plant"].as_array().unwrap();
    assert_eq!(records.len(), 200);
    let mut seqs = Vec::new();
    for r in records {
        assert_eq!(
            r["Dimensions"],
            serde_json::json!([{"Name": "device_id", "Value": "pump-a"}, {"Name": "site", "Value": "osaka"}]),
            "{r}"
        );
        assert_eq!(r["MeasureName"], TABLE, "{r}");
        let measures: Vec<(&str, &str)> = (r["MeasureValues"].as_array().unwrap().iter())
            .map(|m| (m["Name"].as_str().unwrap(), m["Type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            measures,
            [
                ("received_unix_nano", "BIGINT"),
                ("seq", "BIGINT"),
                ("env_temperature_c", "DOUBLE"),
                ("env_humidity_pct", "DOUBLE"),
                ("rssi_dbm", "BIGINT"),
                ("maintenance", "BOOLEAN"),
            ],
            "{r}"
        );
        let seq = &r["MeasureValues"][1]["Value"];
        seqs.push(seq.as_str().unwrap().parse::<u64>().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<u64>>());
}
