//! Unit tests of schema loading (codec and template tests sit beside them).
#![cfg(test)]

use super::*;

const PLANT: &str = include_str!("../../tests/proto/plant.proto");

/// A temp dir with `plant.proto` and a schema file mapping it.
pub fn plant_schema() -> (Schema, tempfile::TempDir) {
    let dir = write_schema(include_str!("../../tests/proto/plant.toml"));
    let schema = Schema::load(&SchemaSource {
        schema: Some(dir.path().join("schema.toml")),
        ..Default::default()
    })
    .unwrap();
    (schema, dir)
}

fn write_schema(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plant.proto"), PLANT).unwrap();
    std::fs::write(dir.path().join("schema.toml"), toml).unwrap();
    dir
}

fn load_err(toml: &str) -> String {
    let dir = write_schema(toml);
    let e = Schema::load(&SchemaSource {
        schema: Some(dir.path().join("schema.toml")),
        ..Default::default()
    })
    .unwrap_err();
    format!("{e:#}")
}

#[test]
fn a_schema_file_maps_topics_to_types() {
    let (schema, _dir) = plant_schema();
    let (rule, labels) = schema.rule_for("plant/osaka/pump-7/metrics").unwrap();
    assert_eq!(rule.message.full_name(), "acme.plant.v1.Metrics");
    assert_eq!(labels["device"], "pump-7");
    assert_eq!(rule.seq.as_ref().unwrap().name(), "sequence");
    assert!(matches!(rule.time, Some(TimeField::Timestamp(_))));
    let cmd = schema.rule_of(Role::Command).unwrap();
    assert_eq!(cmd.template.filter(), "plant/+/+/commands");
    assert!(schema.rule_for("devices/x/telemetry").is_none());
}

#[test]
fn one_type_for_every_topic_needs_no_file() {
    let dir = write_schema("");
    let schema = Schema::load(&SchemaSource {
        proto: vec![dir.path().join("plant.proto")],
        message: Some("acme.plant.v1.Command".into()),
        ..Default::default()
    })
    .unwrap();
    let (rule, _) = schema.rule_for("any/topic/at/all").unwrap();
    assert_eq!(rule.message.full_name(), "acme.plant.v1.Command");
}

#[test]
fn bad_schemas_are_one_line_errors_naming_the_problem() {
    let head = "proto = [\"plant.proto\"]\n[[topic]]\n";
    for (body, says) in [
        ("filter = \"plant/{device}\"\nmessage = \"acme.plant.v1.Metric\"\n", "closest: acme.plant.v1.Metrics"),
        ("filter = \"plant/{site}\"\nmessage = \"acme.plant.v1.Metrics\"\nrole = \"telemetry\"\n", "needs a {device} level"),
        ("filter = \"p/{device}\"\nmessage = \"acme.plant.v1.Metrics\"\nseq = \"site\"\n", "not an integer"),
        ("filter = \"p/{device}\"\nmessage = \"acme.plant.v1.Metrics\"\nseq = \"nope\"\n", "no such field"),
        ("filter = \"p/{device}\"\nmessage = \"acme.plant.v1.Metrics\"\ntime = \"rssi_dbm\"\n", "time_unit"),
        ("filter = \"p/{device}\"\nmessage = \"acme.plant.v1.Metrics\"\ncolour = 1\n", "unknown field `colour`"),
    ] {
        let e = load_err(&format!("{head}{body}"));
        assert!(e.contains(says), "{body}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn a_proto_syntax_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.proto");
    std::fs::write(
        &bad,
        "syntax = \"proto3\";\nmessage M {\n  int32 x = ;\n}\n",
    )
    .unwrap();
    let e = Schema::load(&SchemaSource {
        proto: vec![bad],
        message: Some("M".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("bad.proto:3:"), "{e}");
}

/// plant.proto with the map declared by `(mqttkit.options.topic)` options.
const PLANT_OPTIONS: &str = include_str!("../../tests/proto/plant_options.proto");
const METRICS_OPTION: &str = r#"filter: "plant/{site}/{device}/metrics"
    role: "telemetry"
    seq: "sequence"
    time: "sampled_at""#;

fn load_proto(text: &str, schema: Option<&str>) -> Result<Schema> {
    let dir = write_schema(schema.unwrap_or(""));
    std::fs::write(dir.path().join("plant.proto"), text).unwrap();
    Schema::load(&SchemaSource {
        schema: schema.map(|_| dir.path().join("schema.toml")),
        proto: if schema.is_some() {
            vec![]
        } else {
            vec![dir.path().join("plant.proto")]
        },
        ..Default::default()
    })
}

#[test]
fn the_map_can_live_in_the_proto_as_options() {
    let schema = load_proto(PLANT_OPTIONS, None).unwrap();
    let (rule, labels) = schema.rule_for("plant/osaka/pump-7/metrics").unwrap();
    assert_eq!(rule.message.full_name(), "acme.plant.v1.Metrics");
    assert_eq!(labels["site"], "osaka");
    assert_eq!(rule.role, Some(Role::Telemetry));
    assert_eq!(rule.seq.as_ref().unwrap().name(), "sequence");
    assert!(matches!(rule.time, Some(TimeField::Timestamp(_))));
    let cmd = schema.rule_of(Role::Command).unwrap();
    assert_eq!(cmd.message.full_name(), "acme.plant.v1.Command");
    assert_eq!(cmd.template.filter(), "plant/+/+/commands");
}

#[test]
fn a_schema_files_topics_replace_a_messages_options() {
    let toml = "proto = [\"plant.proto\"]\n[[topic]]\nfilter = \"site/{device}/m\"\nmessage = \"acme.plant.v1.Metrics\"\n";
    let schema = load_proto(PLANT_OPTIONS, Some(toml)).unwrap();
    assert!(schema.rule_for("plant/osaka/pump-7/metrics").is_none());
    assert_eq!(
        schema.rule_for("site/p/m").unwrap().0.message.full_name(),
        "acme.plant.v1.Metrics"
    );
    // The message the file does not map keeps its option.
    assert!(schema.rule_for("plant/osaka/pump-7/commands").is_some());
}

#[test]
fn bad_option_values_are_one_line_errors_naming_the_message_and_the_option() {
    for (metrics, says) in [
        (
            r#"filter: "plant/{device}/m" role: "telemtry""#,
            "\"telemtry\" is not a role",
        ),
        (
            r#"filter: "plant/{site}/metrics" role: "telemetry""#,
            "needs a {device} level",
        ),
        (
            r#"filter: "plant/{device}/m" seq: "site""#,
            "not an integer",
        ),
        (
            r#"filter: "plant/{device}/m" time: "rssi_dbm" time_unit: "hours""#,
            "not a unit",
        ),
        (r#"role: "telemetry""#, "filter is missing"),
    ] {
        assert!(PLANT_OPTIONS.contains(METRICS_OPTION));
        let proto = PLANT_OPTIONS.replace(METRICS_OPTION, metrics);
        let e = format!("{:#}", load_proto(&proto, None).unwrap_err());
        assert!(e.contains(says), "{metrics}: {e}");
        assert!(
            e.contains("acme.plant.v1.Metrics: option (mqttkit.options.topic) #1"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
