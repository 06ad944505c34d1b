//! A user's schema (tests/proto/plant.proto, topics `plant/{site}/{device}/...`)
//! against a real mosquitto: the ACL `broker up --schema` renders, and the
//! one-line errors of a bad schema before anything is written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{mosquitto_tls_args, ok, run, stderr, stdout, Broker, BrokerOptions};

const T: Duration = Duration::from_secs(60);

const SCHEMA: &str = r#"proto = ["plant.proto"]
[[topic]]
filter = "plant/{site}/{device}/metrics"
message = "acme.plant.v1.Metrics"
role = "telemetry"
seq = "sequence"
time = "sampled_at"
[[topic]]
filter = "plant/{site}/{device}/commands"
message = "acme.plant.v1.Command"
role = "command"
"#;

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
