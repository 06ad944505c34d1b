//! Interop with paho-mqtt + protobuf in Python, both ways: the Python peer
//! (tests/py/flows_peer.py) generates its code from proto/*.proto with
//! grpcio-tools into a temp dir at test time.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Broker, Proc};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

/// The Python peer acting as identity `who`.
fn peer(b: &Broker, who: &str, mode: &str) -> Command {
    let certs = b.certs();
    let mut c = Command::new(common::python());
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/flows_peer.py"))
        .arg("--proto-dir")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto"))
        .args(["--host", "127.0.0.1", "--port", &b.port.to_string()])
        .arg("--cafile")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(certs.join(format!("{who}.crt")))
        .arg("--key")
        .arg(certs.join(format!("{who}.key")))
        .args(["--timeout", "60", mode]);
    c
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn python_decodes_what_mqttkit_publishes() {
    let b = Broker::start();
    let mut py = peer(&b, "server", "sub-telemetry");
    py.args(["--count", "100"]);
    let mut py = Proc::spawn(py);
    py.wait_stderr("subscribed to devices/+/telemetry");

    let mut c = b.mqttkit();
    c.args(["pub", "telemetry", "--count", "100"]);
    common::ok(&common::run(&mut c, LIMIT));

    let (status, lines, err) = py.finish(LIMIT);
    assert!(status.success(), "python subscriber: {err}");
    let got = json_lines(&lines);
    let mut seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..100).collect::<Vec<u64>>());
    for v in &got {
        assert_eq!(v["device_id"], "device-001");
        assert_eq!(v["topic"], "devices/device-001/telemetry");
        assert!(v["time_unix_nano"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        assert!((950.0..=1050.0).contains(&v["pressure_hpa"].as_f64().unwrap()));
        assert!((3.0..=4.2).contains(&v["battery_v"].as_f64().unwrap()));
        assert!(v["rssi_dbm"].as_i64().unwrap() < 0);
        assert_ne!(v["status"], "STATUS_UNSPECIFIED");
    }
}

#[test]
fn mqttkit_decodes_what_python_publishes() {
    let b = Broker::start();
    let mut c = b.mqttkit();
    c.args(["sub", "telemetry", "--json", "--count", "20"]);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to");

    let mut py = peer(&b, "device-001", "pub-telemetry");
    py.args(["--device-id", "device-001", "--count", "20"]);
    let (status, _, err) = Proc::spawn(py).finish(LIMIT);
    assert!(status.success(), "python publisher: {err}");

    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "{err}");
    let got = json_lines(&lines);
    assert_eq!(got.len(), 20);
    for (i, v) in got.iter().enumerate() {
        // The peer sets these from i, so every field made it across.
        assert_eq!(v["seq"], i as u64);
        assert_eq!(v["device_id"], "device-001");
        let t = v["temperature_c"].as_f64().unwrap();
        assert!((t - (20.0 + i as f64 / 100.0)).abs() < 1e-9, "{v}");
        assert_eq!(v["humidity_pct"], 40.5);
        assert_eq!(v["pressure_hpa"], 1013.25);
        assert_eq!(v["battery_v"], 3.7);
        assert_eq!(v["rssi_dbm"], -60 - (i as i64 % 10));
        let status = if i % 2 == 1 {
            "STATUS_WARNING"
        } else {
            "STATUS_OK"
        };
        assert_eq!(v["status"], status);
    }
}

#[test]
fn commands_cross_languages_both_ways() {
    let b = Broker::start();
    // mqttkit server -> Python device.
    let mut py = peer(&b, "device-001", "sub-command");
    py.args(["--device-id", "device-001", "--count", "1"]);
    let mut py = Proc::spawn(py);
    py.wait_stderr("subscribed to devices/device-001/commands");
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "command",
        "--device-id",
        "device-001",
        "--name",
        "set_interval",
        "--param",
        "seconds=5",
        "--json",
    ]);
    let o = common::ok(&common::run(&mut c, LIMIT)).clone();
    let sent: Value = serde_json::from_str(common::stdout(&o).trim()).unwrap();
    let (status, lines, err) = py.finish(LIMIT);
    assert!(status.success(), "{err}");
    let got = json_lines(&lines);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], sent["id"]);
    assert_eq!(got[0]["name"], "set_interval");
    assert_eq!(got[0]["params"]["seconds"], "5");

    // Python server -> mqttkit device.
    let mut c = b.mqttkit();
    c.args([
        "sub",
        "command",
        "--device-id",
        "device-001",
        "--count",
        "1",
        "--json",
    ]);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to");
    let mut py = peer(&b, "server", "pub-command");
    py.args([
        "--device-id",
        "device-001",
        "--name",
        "reboot",
        "--param",
        "delay=3",
    ]);
    let (status, lines, err) = Proc::spawn(py).finish(LIMIT);
    assert!(status.success(), "{err}");
    let sent = json_lines(&lines);
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "{err}");
    let got = json_lines(&lines);
    assert_eq!(got[0]["id"], sent[0]["id"]);
    assert_eq!(got[0]["name"], "reboot");
    assert_eq!(got[0]["params"]["delay"], "3");
    assert_eq!(got[0]["device_id"], "device-001");
}
