//! Unit tests of the user tables: columns, rows, evolution.

use rumqttc::QoS;

use super::*;
use crate::schema::tests::plant_schema;

fn plant_tables() -> (UserTables, tempfile::TempDir) {
    let (schema, dir) = plant_schema();
    (UserTables::new(schema).unwrap(), dir)
}

fn message(topic: &str, json: &str, tables: &UserTables) -> Message {
    let desc = &tables.tables[0].message;
    Message::new(
        topic,
        QoS::AtLeastOnce,
        codec::encode_json(desc, json).unwrap(),
    )
}

#[test]
fn a_message_type_makes_one_table_with_flattened_typed_columns() {
    let (tables, _dir) = plant_tables();
    assert_eq!(tables.tables.len(), 1, "the command type is not stored");
    let t = &tables.tables[0];
    assert_eq!(t.name, "acme_plant_v1_metrics");
    assert_eq!(t.key, Key::DeviceSeq);
    let cols: Vec<(&str, ColType)> = (t.columns(Dialect::Sqlite).iter())
        .map(|c| (c.name, c.ty))
        .collect();
    use ColType::*;
    assert_eq!(
        cols,
        [
            ("device_id", Text),
            ("site", Text),
            ("seq", Int),
            ("time_unix_nano", Int),
            ("received_unix_nano", Int),
            ("msg_site", Text),
            ("env_temperature_c", Real),
            ("env_humidity_pct", Real),
            ("tags", Json),
            ("limits", Json),
            ("state", Text),
            ("error", Text),
            ("ok_code", Int),
            ("rssi_dbm", Int),
            ("maintenance", Bool),
            ("nonfinite", Text),
        ]
    );
    assert!(!t
        .columns(Dialect::Postgres)
        .iter()
        .any(|c| c.name == "nonfinite"));
    let sql = t.create_sql(Dialect::Sqlite);
    assert!(
        sql.contains("PRIMARY KEY (device_id, seq)) WITHOUT ROWID"),
        "{sql}"
    );
}

#[test]
fn a_message_becomes_a_row_of_typed_cells() {
    let (tables, _dir) = plant_tables();
    let json = r#"{"site":"in-payload","sequence":"7","sampledAt":"2026-12-02T01:02:03.500Z",
        "env":{"temperatureC":21.5,"humidityPct":0.1},"tags":["a","b"],"limits":{"max":9.5},
        "state":"STATE_RUNNING","okCode":3,"rssiDbm":-60,"maintenance":true}"#;
    let r = tables
        .row(&message("plant/osaka/pump-7/metrics", json, &tables))
        .unwrap();
    assert_eq!(r.device_id, "pump-7");
    assert_eq!(r.labels, [Some("osaka".to_string())]);
    assert_eq!(r.seq, Some(7));
    assert_eq!(r.time_unix_nano, Some(1_796_173_323_500_000_000));
    let text = |s: &str| Cell::Text(s.into());
    assert_eq!(
        r.cells,
        [
            text("in-payload"),
            Cell::Real(21.5),
            Cell::Real(0.1), // a float, stored by its shortest text
            text(r#"["a","b"]"#),
            text(r#"{"max":9.5}"#),
            text("STATE_RUNNING"),
            Cell::Null, // the other oneof member
            Cell::Int(3),
            Cell::Int(-60),
            Cell::Bool(true),
        ]
    );
    // Unset: the nested message's columns are NULL, lists empty, seq 0.
    let r = tables
        .row(&message(
            "plant/osaka/pump-7/metrics",
            r#"{"okCode":1}"#,
            &tables,
        ))
        .unwrap();
    assert_eq!((r.seq, r.time_unix_nano), (Some(0), None));
    assert_eq!(r.cells[1..4], [Cell::Null, Cell::Null, text("[]")]);
}

#[test]
fn what_can_never_be_a_row_says_why_and_names_the_device() {
    let (tables, _dir) = plant_tables();
    let garbage = Message::new(
        "plant/osaka/pump-7/metrics",
        QoS::AtLeastOnce,
        vec![0xff, 0xff],
    );
    let e = tables.row(&garbage).unwrap_err();
    assert!(e.reason.contains("not a acme.plant.v1.Metrics"), "{e:?}");
    assert_eq!(e.device_id.as_deref(), Some("pump-7"));
    let empty = Message::new("plant/osaka/pump-7/metrics", QoS::AtLeastOnce, vec![]);
    assert!(tables
        .row(&empty)
        .unwrap_err()
        .reason
        .starts_with("empty payload"));
    let other = Message::new("elsewhere/x", QoS::AtLeastOnce, vec![8, 1]);
    assert!(tables
        .row(&other)
        .unwrap_err()
        .reason
        .contains("no telemetry [[topic]]"));
}

#[test]
fn evolution_adds_new_columns_and_refuses_a_changed_type_or_key() {
    let (tables, _dir) = plant_tables();
    let t = &tables.tables[0];
    let mut old = Existing {
        columns: (t.columns(Dialect::Postgres).iter())
            .filter(|c| c.name != "maintenance")
            .map(|c| (c.name.to_string(), c.ty.sql(Dialect::Postgres).to_string()))
            .collect(),
        key: vec!["device_id".into(), "seq".into()],
    };
    old.columns.push(("removed_field".into(), "bigint".into()));
    let add = evolve(t, &old, Dialect::Postgres, "--sink pg").unwrap();
    let names: Vec<&str> = add.iter().map(|c| c.name).collect();
    assert_eq!(names, ["maintenance"]);
    assert_eq!(
        add_column_sql(&t.name, &add[0], Dialect::Postgres),
        r#"ALTER TABLE "acme_plant_v1_metrics" ADD COLUMN "maintenance" boolean"#
    );

    let rssi = old.columns.iter_mut().find(|c| c.0 == "rssi_dbm").unwrap();
    rssi.1 = "text".into();
    let e = evolve(t, &old, Dialect::Postgres, "--sink pg")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--sink pg: table acme_plant_v1_metrics column rssi_dbm is text, but acme.plant.v1.Metrics.rssi_dbm is now int32 (bigint); "),
        "{e}"
    );
    assert!(!e.contains('\n'));

    old.key = vec!["device_id".into(), "time_unix_nano".into()];
    let e = evolve(t, &old, Dialect::Postgres, "--sink pg")
        .unwrap_err()
        .to_string();
    assert!(e.contains("keyed by (device_id, time_unix_nano)"), "{e}");
}

#[test]
fn names_fit_every_store() {
    assert_eq!(ident("acme.plant.v1.Metrics"), "acme_plant_v1_metrics");
    let long = ident(&"x".repeat(100));
    assert_eq!(long.len(), 63);
    assert_ne!(long, ident(&"x".repeat(101)));
}
