//! A user's schema (tests/proto/plant.proto, topics `plant/{site}/{device}/...`)
//! against a real mosquitto: the ACL `broker up --schema` renders, and the
//! one-line errors of a bad schema before anything is written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{mosquitto_tls_args, ok, run, stderr, stdout, Broker, BrokerOptions};

const T: Duration = Duration::from_secs(60);

const SCHEMA: &str = include_str!("proto/plant.toml");

/// `plant.proto` and `schema.toml` (with `toml` as its text) in `dir`.
fn write_schema(dir: &Path, toml: &str) -> PathBuf {
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proto/plant.proto"),
        dir.join("plant.proto"),
    )
    .unwrap();
    let path = dir.join("schema.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// mosquitto_sub as `identity` on `topic`, waiting up to `secs` for `count` messages.
fn sub(b: &Broker, identity: &str, topic: &str, count: usize, secs: u32) -> std::process::Child {
    let child = Command::new("mosquitto_sub")
        .args(mosquitto_tls_args(b, Some(identity)))
        .args(["-t", topic, "-q", "1", "-v", "-C", &count.to_string()])
        .args(["-W", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // mosquitto_sub has no "subscribed" signal; give it time to SUBSCRIBE.
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn publish(b: &Broker, identity: &str, topic: &str, msg: &str) {
    ok(&run(
        Command::new("mosquitto_pub")
            .args(mosquitto_tls_args(b, Some(identity)))
            .args(["-t", topic, "-m", msg, "-q", "1"]),
        T,
    ));
}

#[test]
fn broker_up_with_a_schema_confines_devices_to_their_mapped_topics() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_schema(tmp.path(), SCHEMA);
    let b = Broker::start_with(BrokerOptions {
        clients: vec!["pump-a".into(), "pump-b".into()],
        up_args: vec!["--schema".into(), schema.display().to_string()],
        ..Default::default()
    });
    let acl = std::fs::read_to_string(b.out().join("mosquitto/acl")).unwrap();
    assert!(acl.contains("pattern write plant/+/%u/metrics\n"), "{acl}");
    assert!(acl.contains("pattern read plant/+/%u/commands\n"), "{acl}");
    assert!(!acl.contains("devices/"), "{acl}");

    // The server reads every device's metrics, at any site.
    let server = sub(&b, "server", "plant/+/+/metrics", 2, 10);
    publish(&b, "pump-a", "plant/osaka/pump-a/metrics", "a-own");
    publish(&b, "pump-a", "plant/osaka/pump-b/metrics", "a-forged");
    publish(&b, "pump-a", "devices/pump-a/telemetry", "a-old-tree");
    publish(&b, "pump-b", "plant/kobe/pump-b/metrics", "b-own");
    let got = stdout(&common::wait_output(server, T, "server"));
    assert!(got.contains("plant/osaka/pump-a/metrics a-own"), "{got}");
    assert!(got.contains("plant/kobe/pump-b/metrics b-own"), "{got}");
    assert!(!got.contains("forged"), "{got}");

    // pump-a reads only its own commands; a device cannot send any.
    let spy = sub(&b, "pump-a", "plant/osaka/pump-b/commands", 1, 3);
    let own = sub(&b, "pump-b", "plant/osaka/pump-b/commands", 2, 4);
    publish(&b, "server", "plant/osaka/pump-b/commands", "reboot");
    publish(&b, "pump-a", "plant/osaka/pump-b/commands", "evil");
    let own = stdout(&common::wait_output(own, T, "pump-b"));
    assert!(own.contains("reboot"), "{own}");
    assert!(!own.contains("evil"), "{own}");
    let spied = stdout(&common::wait_output(spy, T, "pump-a"));
    assert!(!spied.contains("reboot"), "pump-a read pump-b's command");
}

#[test]
fn a_bad_schema_is_a_one_line_error_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    for (toml, says) in [
        (
            SCHEMA.replace("Metrics\"", "Metric\""),
            "closest: acme.plant.v1.Metrics",
        ),
        (
            SCHEMA.replace("seq = \"sequence\"", "seq = \"site\""),
            "not an integer",
        ),
        (
            SCHEMA.replace("{site}/{device}/metrics", "{site}/metrics"),
            "needs a {device} level",
        ),
        (format!("{SCHEMA}colour = 1\n"), "unknown field"),
    ] {
        let schema = write_schema(tmp.path(), &toml);
        let mut c = b.mqttkit();
        c.args(["broker", "up", "--out", "out", "--runtime", "native"])
            .args(["--port", &common::free_port().to_string()])
            .arg("--schema")
            .arg(&schema);
        let o = run(&mut c, T);
        let err = stderr(&o);
        assert!(!o.status.success(), "{toml}");
        assert!(err.contains(says), "{says}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!b.out().join("mosquitto/acl").exists(), "{err}");
    }
    // A .proto syntax error: file:line:column.
    std::fs::write(
        tmp.path().join("plant.proto"),
        "syntax = \"proto3\";\nmessage M {\n  int32 x = ;\n}\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("schema.toml"), SCHEMA).unwrap();
    let mut c = b.mqttkit();
    c.args(["broker", "up", "--out", "out", "--runtime", "native"])
        .arg("--schema")
        .arg(tmp.path().join("schema.toml"));
    let err = stderr(&run(&mut c, T));
    assert!(err.contains("plant.proto:3:"), "{err}");
}

/// The Python peer (paho-mqtt + code generated from plant.proto) as `who`.
fn peer(b: &Broker, proto: &Path, who: &str, mode: &str, arg: &str) -> Command {
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
    .args([mode, arg]);
    c
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A broker whose ACL follows the plant schema, with device pump-a.
fn plant_broker(dir: &Path) -> (Broker, PathBuf) {
    let schema = write_schema(dir, SCHEMA);
    let b = Broker::start_with(BrokerOptions {
        clients: vec!["pump-a".into()],
        up_args: vec!["--schema".into(), schema.display().to_string()],
        ..Default::default()
    });
    (b, schema)
}

/// `mqttkit sub -t plant/# -C 1 EXTRA`, started and subscribed.
fn mqttkit_sub(b: &Broker, extra: &[&str]) -> common::Proc {
    let mut c = b.mqttkit();
    c.args(["sub", "-t", "plant/#", "-C", "1", "-W", "30"])
        .args(extra);
    let mut p = common::Proc::spawn(c);
    p.wait_stderr("subscribed to");
    p
}

#[test]
fn sub_prints_an_independent_clients_message_as_its_message_to_dict() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, schema) = plant_broker(tmp.path());
    let proto = tmp.path().join("plant.proto");
    let sub = mqttkit_sub(&b, &["--schema", schema.to_str().unwrap()]);
    let sent = ok(&run(
        &mut peer(
            &b,
            &proto,
            "pump-a",
            "publish",
            "plant/osaka/pump-a/metrics",
        ),
        T,
    ))
    .clone();
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    let line = json(&lines[0]);
    assert_eq!(line["message"], json(&stdout(&sent)), "{line}");
    assert_eq!(line["type"], "acme.plant.v1.Metrics");
    assert_eq!(line["labels"]["site"], "osaka");
    assert_eq!(line["labels"]["device"], "pump-a");
    assert_eq!(line["topic"], "plant/osaka/pump-a/metrics");
    assert!(line["received"].as_str().unwrap().ends_with('Z'), "{line}");
}

#[test]
fn a_descriptor_set_from_protoc_decodes_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, _) = plant_broker(tmp.path());
    let proto = tmp.path().join("plant.proto");
    let set = tmp.path().join("plant.binpb");
    ok(&run(
        &mut peer(
            &b,
            &proto,
            "server",
            "descriptor-set",
            set.to_str().unwrap(),
        ),
        T,
    ));
    let sub = mqttkit_sub(
        &b,
        &[
            "--descriptor-set",
            set.to_str().unwrap(),
            "--message",
            "acme.plant.v1.Metrics",
        ],
    );
    let sent = stdout(ok(&run(
        &mut peer(&b, &proto, "pump-a", "publish", "plant/kobe/pump-a/metrics"),
        T,
    )));
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(json(&lines[0])["message"], json(&sent));
}

#[test]
fn pub_json_is_decoded_by_the_independent_client_into_an_equal_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, schema) = plant_broker(tmp.path());
    let proto = tmp.path().join("plant.proto");
    let sample = stdout(ok(&run(&mut peer(&b, &proto, "server", "sample", "-"), T)));
    let mut receiver = common::Proc::spawn(peer(
        &b,
        &proto,
        "server",
        "receive",
        "plant/osaka/pump-a/metrics",
    ));
    receiver.wait_stderr("subscribed to");
    let certs = b.certs();
    let mut c = b.mqttkit();
    c.args(["pub", "-t", "plant/osaka/pump-a/metrics", "-q", "1"])
        .args([
            "--schema",
            schema.to_str().unwrap(),
            "--json",
            sample.trim(),
        ])
        .arg("--cert")
        .arg(certs.join("pump-a.crt"))
        .arg("--key")
        .arg(certs.join("pump-a.key"));
    ok(&run(&mut c, T));
    let (status, lines, err) = receiver.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(json(&lines[0]), json(&sample));
}

#[test]
fn json_that_does_not_fit_is_a_one_line_error_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Broker::start();
    let schema = write_schema(tmp.path(), SCHEMA);
    let schema = schema.to_str().unwrap();
    for (json, says) in [
        (r#"{"env": {"temperatureC": "warm"}}"#, "env.temperatureC"),
        (r#"{"colour": 1}"#, "colour"),
    ] {
        let mut c = b.mqttkit();
        c.args([
            "pub",
            "-t",
            "plant/a/b/metrics",
            "--schema",
            schema,
            "--json",
            json,
        ]);
        let o = run(&mut c, T);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains(says), "{err}");
        assert!(err.contains("acme.plant.v1.Metrics"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A JSON-lines file: every line checked before anything is sent.
    let lines = tmp.path().join("m.jsonl");
    std::fs::write(&lines, "{\"sequence\": \"1\"}\n\n{\"sequence\": \"x\"}\n").unwrap();
    let mut c = b.mqttkit();
    c.args(["pub", "-t", "plant/a/b/metrics", "--schema", schema, "-f"])
        .arg(&lines);
    let err = stderr(&run(&mut c, T));
    assert!(err.contains("m.jsonl:3:"), "{err}");
    // No type for the topic: --json is refused, with the way out.
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "-t",
        "other/topic",
        "--schema",
        schema,
        "--json",
        "{}",
    ]);
    let err = stderr(&run(&mut c, T));
    assert!(
        err.contains("no message type for topic other/topic"),
        "{err}"
    );
}

#[test]
fn pub_and_sub_telemetry_on_the_schema_count_every_seq_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, schema) = plant_broker(tmp.path());
    let schema = schema.to_str().unwrap();
    let mut c = b.mqttkit();
    c.args([
        "sub",
        "telemetry",
        "--schema",
        schema,
        "--json",
        "--count",
        "2000",
    ]);
    let mut sub = common::Proc::spawn(c);
    sub.wait_stderr("subscribed to plant/+/+/metrics");
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "telemetry",
        "--schema",
        schema,
        "--device-id",
        "pump-a",
    ])
    .args([
        "--label",
        "site=osaka",
        "--count",
        "2000",
        "--qos",
        "1",
        "--json",
    ]);
    let o = run(&mut c, T);
    let summary = json(&stdout(ok(&o)));
    assert_eq!(summary["acked"], 2000, "{summary}");
    assert_eq!(summary["topic"], "plant/osaka/pump-a/metrics");
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    let mut seqs: Vec<u64> = lines
        .iter()
        .map(|l| json(l)["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (0..2000).collect::<Vec<u64>>());
    let first = json(&lines[0]);
    assert_eq!(first["device"], "pump-a");
    assert_eq!(first["labels"]["site"], "osaka");
    assert_eq!(first["type"], "acme.plant.v1.Metrics");
    assert!(
        first["message"]["sampledAt"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{first}"
    );
    assert!(
        first["message"]["env"]["temperatureC"].is_number(),
        "{first}"
    );
    // A label the topic needs but nobody gave: one line before connecting.
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "telemetry",
        "--schema",
        schema,
        "--device-id",
        "pump-a",
        "--count",
        "1",
    ]);
    let err = stderr(&run(&mut c, T));
    assert!(err.contains("no value for {site}"), "{err}");
}

#[test]
fn garbage_and_empty_payloads_on_a_mapped_topic_are_quarantined_and_the_stream_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, schema) = plant_broker(tmp.path());
    let schema = schema.to_str().unwrap();
    let mut c = b.mqttkit();
    c.args([
        "sub",
        "telemetry",
        "--schema",
        schema,
        "--json",
        "--count",
        "1",
    ]);
    let mut sub = common::Proc::spawn(c);
    sub.wait_stderr("subscribed to plant/+/+/metrics");
    let topic = "plant/osaka/pump-a/metrics";
    publish(&b, "pump-a", topic, "\u{1}garbage");
    ok(&run(
        Command::new("mosquitto_pub")
            .args(mosquitto_tls_args(&b, Some("pump-a")))
            .args(["-t", topic, "-n", "-q", "1"]),
        T,
    ));
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "telemetry",
        "--schema",
        schema,
        "--device-id",
        "pump-a",
    ])
    .args(["--label", "site=osaka", "--count", "1", "--qos", "1"]);
    ok(&run(&mut c, T));
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(json(&lines[0])["seq"], 0);
    assert_eq!(err.matches("warning").count(), 2, "{err}");
    let dead = std::fs::read_to_string(b.out().join("dead-letter/rejected.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 2, "{dead}");
}
