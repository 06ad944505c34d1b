//! The role flows on a user's map against a real mosquitto: `pub command` /
//! `sub command`, `doctor` and `bench` with `--schema`, and the map declared
//! in the `.proto` by mqttkit's custom option (tests/proto/plant_options.proto).
//! The independent client is the paho-mqtt peer of tests/py/schema_peer.py.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{mosquitto_tls_args, ok, run, stderr, stdout, Broker, BrokerOptions, Proc};

const T: Duration = Duration::from_secs(60);

const SCHEMA: &str = include_str!("proto/plant.toml");
const PLANT: &str = include_str!("proto/plant.proto");
const PLANT_OPTIONS: &str = include_str!("proto/plant_options.proto");

/// plant.proto (for the peer), plant_options.proto and `schema.toml` with
/// `toml` as its text, in `dir`; returns the schema file.
fn write_schema(dir: &Path, toml: &str) -> PathBuf {
    std::fs::write(dir.join("plant.proto"), PLANT).unwrap();
    std::fs::write(dir.join("plant_options.proto"), PLANT_OPTIONS).unwrap();
    let path = dir.join("schema.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A broker whose ACL follows `toml`, with devices pump-a and pump-b.
fn broker_for(dir: &Path, toml: &str) -> (Broker, PathBuf) {
    let schema = write_schema(dir, toml);
    let b = Broker::start_with(BrokerOptions {
        clients: vec!["pump-a".into(), "pump-b".into()],
        up_args: vec!["--schema".into(), schema.display().to_string()],
        ..Default::default()
    });
    (b, schema)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The paho peer as `who` (its certificate from the broker's out dir),
/// with code generated from `proto`.
fn peer(b: &Broker, proto: &Path, who: &str, args: &[&str]) -> Command {
    let certs = b.certs();
    let mut c = Command::new(common::python());
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/schema_peer.py"
    ))
    .arg("--proto")
    .arg(proto)
    .args(["--port", &b.port.to_string()])
    .arg("--cafile")
    .arg(certs.join("ca.crt"))
    .arg("--cert")
    .arg(certs.join(format!("{who}.crt")))
    .arg("--key")
    .arg(certs.join(format!("{who}.key")))
    .args(args);
    c
}

/// The lines of the one-line error `cmd` must end with (non-zero exit).
fn one_line_error(cmd: &mut Command) -> String {
    let o = run(cmd, T);
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

const COMMAND: &str = r#"{"name":"set_interval","seconds":30,"requestId":"r-17"}"#;

#[test]
fn pub_command_sends_the_users_command_type_to_the_mapped_topic() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, schema) = broker_for(tmp.path(), SCHEMA);
    let schema = schema.to_str().unwrap();
    // The independent client (as pump-a) and `sub command` both listen.
    let plain = tmp.path().join("plant.proto");
    let mut paho = Proc::spawn(peer(
        &b,
        &plain,
        "pump-a",
        &[
            "--message",
            "Command",
            "receive",
            "plant/osaka/pump-a/commands",
        ],
    ));
    paho.wait_stderr("subscribed to");
    let mut c = b.mqttkit();
    c.args([
        "sub",
        "command",
        "--schema",
        schema,
        "--device-id",
        "pump-a",
    ])
    .args(["-C", "2", "-W", "30"]);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to plant/+/pump-a/commands");

    let mut c = b.mqttkit();
    c.args([
        "pub",
        "command",
        "--schema",
        schema,
        "--device-id",
        "pump-a",
    ])
    .args(["--label", "site=osaka", "--json", COMMAND]);
    let sent = json(&stdout(ok(&run(&mut c, T))));
    assert_eq!(sent["topic"], "plant/osaka/pump-a/commands", "{sent}");
    assert_eq!(sent["type"], "acme.plant.v1.Command");
    assert_eq!(sent["message"], json(COMMAND));
    let (status, lines, err) = paho.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(
        json(&lines[0]),
        json(COMMAND),
        "the peer decoded an equal message"
    );

    // What does not decode is printed as hex with the error, not dropped.
    ok(&run(
        Command::new("mosquitto_pub")
            .args(mosquitto_tls_args(&b, Some("server")))
            .args([
                "-t",
                "plant/kobe/pump-a/commands",
                "-m",
                "\u{1}junk",
                "-q",
                "1",
            ]),
        T,
    ));
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first = json(&lines[0]);
    assert_eq!(first["message"], json(COMMAND), "{first}");
    assert_eq!(first["labels"]["site"], "osaka");
    assert_eq!(first["labels"]["device"], "pump-a");
    let junk = json(&lines[1]);
    assert_eq!(junk["topic"], "plant/kobe/pump-a/commands");
    assert_eq!(junk["payload_hex"], "016a756e6b", "{junk}");
    assert!(
        junk["error"]
            .as_str()
            .unwrap()
            .contains("acme.plant.v1.Command"),
        "{junk}"
    );
}

#[test]
fn pub_command_errors_name_the_missing_label_and_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_schema(tmp.path(), SCHEMA);
    let b = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let schema = schema.to_str().unwrap();
    let base = [
        "pub",
        "command",
        "--schema",
        schema,
        "--device-id",
        "pump-a",
    ];
    let err = one_line_error(b.mqttkit().args(base).args(["--json", COMMAND]));
    assert!(err.contains("no value for {site}"), "{err}");
    assert!(err.contains("--label site="), "{err}");
    let err = one_line_error(b.mqttkit().args(base).args([
        "--label",
        "site=osaka",
        "--json",
        r#"{"seconds":"soon"}"#,
    ]));
    assert!(
        err.contains("acme.plant.v1.Command at field seconds"),
        "{err}"
    );
    let err = one_line_error(b.mqttkit().args(base).args(["--name", "reboot"]));
    assert!(err.contains("--json '{...}'"), "{err}");
    // mqttkit's own command keeps its flags, and a body needs a schema.
    let err = one_line_error(b.mqttkit().args([
        "pub",
        "command",
        "--device-id",
        "d",
        "--name",
        "x",
        "--json",
        "{}",
    ]));
    assert!(err.contains("needs --schema"), "{err}");
}

/// `doctor ARGS --schema F --label site=osaka`.
fn doctor(b: &Broker, schema: &Path, args: &[&str]) -> std::process::Output {
    let mut c = b.mqttkit();
    c.arg("doctor")
        .args(args)
        .arg("--schema")
        .arg(schema)
        .args(["--label", "site=osaka"]);
    run(&mut c, T)
}

#[test]
fn doctor_proves_the_mapped_topics_and_names_the_one_the_acl_denies() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, schema) = broker_for(tmp.path(), SCHEMA);
    // The device under test, and the server with the profile's device as its peer.
    for (args, device) in [
        (&["--device-id", "pump-a"][..], "pump-a"),
        (&["--server"][..], "device-001"),
    ] {
        let o = doctor(&b, &schema, args);
        let text = stdout(&o);
        assert!(o.status.success(), "{args:?}: {text}");
        assert!(text.contains("all checks passed"), "{text}");
        for topic in ["metrics", "commands"] {
            let topic = format!("plant/osaka/{device}/{topic}");
            assert!(
                (text.lines()).any(|l| l.starts_with("[ ok ]") && l.contains(&topic)),
                "{topic}: {text}"
            );
        }
    }
    // A broker rendered from another map (telemetry on .../status): the
    // metrics topic is denied, and doctor names it.
    let other = tempfile::tempdir().unwrap();
    let (b2, _) = broker_for(other.path(), &SCHEMA.replace("}/metrics", "}/status"));
    let o = doctor(&b2, &schema, &["--device-id", "pump-a"]);
    assert!(!o.status.success());
    let text = stdout(&o);
    let fail = text
        .lines()
        .find(|l| l.starts_with("[FAIL]"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(fail.contains("publish permission"), "{text}");
    assert!(fail.contains("'plant/osaka/pump-a/metrics'"), "{text}");
    assert!(text.contains("ACL"), "{text}");

    // Without the server identity nothing can be proven by delivery: a
    // failed step that says so, not a pass on acknowledgements.
    std::fs::remove_file(b.certs().join("server.crt")).unwrap();
    let o = doctor(&b, &schema, &["--device-id", "pump-a"]);
    assert!(!o.status.success());
    let text = stdout(&o);
    let fail = text
        .lines()
        .find(|l| l.starts_with("[FAIL]"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(fail.contains("no peer identity"), "{text}");
    assert!(fail.contains("the server identity"), "{text}");
}

#[test]
fn bench_publishes_the_mapped_type_and_measures_latency_from_its_time_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, schema) = broker_for(tmp.path(), SCHEMA);
    let mut c = b.mqttkit();
    c.args(["bench", "--devices", "3", "--count", "200", "--json"])
        .arg("--schema")
        .arg(&schema)
        .args(["--label", "site=osaka"]);
    let rep = json(&stdout(ok(&run(&mut c, T))));
    assert_eq!(rep["payload"], "acme.plant.v1.Metrics", "{rep}");
    assert_eq!(rep["identities"], "per-device");
    assert_eq!(rep["published"], 600);
    assert_eq!(rep["delivered"], 600, "{rep}");
    assert_eq!(rep["lost"], 0);
    assert_eq!(rep["foreign"], 0);
    let p50 = rep["latency"]["p50_ms"].as_f64().unwrap();
    let max = rep["latency"]["max_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max && max < 30_000.0, "{rep}");
    for d in rep["per_device"].as_array().unwrap() {
        assert_eq!(d["delivered"], 200, "{d}");
    }
    // Without a time field there is nothing to measure latency from.
    let no_time = write_schema(tmp.path(), &SCHEMA.replace("time = \"sampled_at\"\n", ""));
    let err = one_line_error(
        b.mqttkit()
            .args(["bench", "--devices", "1", "--count", "1", "--schema"])
            .arg(&no_time)
            .args(["--label", "site=osaka"]),
    );
    assert!(err.contains("maps no time field"), "{err}");
    assert!(err.contains("time = \"FIELD\""), "{err}");
}

#[test]
fn a_map_declared_in_the_proto_by_the_custom_option_decodes_sub() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, _) = broker_for(tmp.path(), SCHEMA);
    let proto = tmp.path().join("plant_options.proto");
    let plain = tmp.path().join("plant.proto");
    let mut c = b.mqttkit();
    c.args(["sub", "-t", "plant/#", "-C", "1", "-W", "30", "--proto"])
        .arg(&proto);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to");
    let sent = stdout(ok(&run(
        &mut peer(
            &b,
            &plain,
            "pump-a",
            &["publish", "plant/osaka/pump-a/metrics"],
        ),
        T,
    )))
    .clone();
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    let line = json(&lines[0]);
    assert_eq!(line["type"], "acme.plant.v1.Metrics", "{line}");
    assert_eq!(line["labels"]["site"], "osaka");
    assert_eq!(line["labels"]["device"], "pump-a");
    assert_eq!(line["message"], json(&sent));

    // protoc (grpcio-tools) with a copy of the options file: its descriptor
    // set carries the options, and the same map decodes.
    std::fs::create_dir_all(tmp.path().join("mqttkit")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/proto/mqttkit/options.proto"),
        tmp.path().join("mqttkit/options.proto"),
    )
    .unwrap();
    let set = tmp.path().join("plant.binpb");
    ok(&run(
        &mut peer(
            &b,
            &proto,
            "server",
            &["descriptor-set", set.to_str().unwrap()],
        ),
        T,
    ));
    let mut c = b.mqttkit();
    c.args([
        "sub",
        "-t",
        "plant/#",
        "-C",
        "1",
        "-W",
        "30",
        "--descriptor-set",
    ])
    .arg(&set);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to");
    ok(&run(
        &mut peer(
            &b,
            &plain,
            "pump-a",
            &["publish", "plant/kobe/pump-a/metrics"],
        ),
        T,
    ));
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    let line = json(&lines[0]);
    assert_eq!(line["type"], "acme.plant.v1.Metrics", "{line}");
    assert_eq!(line["message"], json(&sent));

    // The role flows read the same map: a command, no schema file.
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "command",
        "--device-id",
        "pump-a",
        "--label",
        "site=osaka",
    ])
    .arg("--proto")
    .arg(&proto)
    .args(["--json", COMMAND]);
    let sent = json(&stdout(ok(&run(&mut c, T))));
    assert_eq!(sent["topic"], "plant/osaka/pump-a/commands", "{sent}");
}

#[test]
fn bad_option_values_are_one_line_errors_naming_the_message_and_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    for (from, to, says) in [
        (
            "role: \"telemetry\"",
            "role: \"telemtry\"",
            "\"telemtry\" is not a role",
        ),
        (
            "{site}/{device}/metrics",
            "{site}/metrics",
            "needs a {device} level",
        ),
    ] {
        let proto = tmp.path().join("bad.proto");
        std::fs::write(&proto, PLANT_OPTIONS.replace(from, to)).unwrap();
        let err = one_line_error(
            b.mqttkit()
                .args(["sub", "-t", "plant/#", "--proto"])
                .arg(&proto),
        );
        assert!(err.contains(says), "{err}");
        assert!(
            err.contains("acme.plant.v1.Metrics: option (mqttkit.options.topic) #1"),
            "{err}"
        );
    }
}
