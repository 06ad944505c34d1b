//! `sub telemetry --sink influx://...` into a real InfluxDB 1.x (Debian's
//! `influxdb` package, v1 write API) started on a free loopback port.

mod common;
mod sink_support;

use common::Broker;
use std::time::{Duration, Instant};

use sink_support::{kill_restart_flow, poison_flow, rows, Influx, SinkProc, POISONER, REASONS};

#[test]
fn influx_keeps_every_point_once_across_sigkill() {
    let influx = Influx::start();
    let broker = Broker::start();
    let url = format!("influx://127.0.0.1:{}/telemetry", influx.port);
    kill_restart_flow(&broker, &url, 5000, &[]);

    // Read back with InfluxQL: one series per device, every field present.
    let v = influx.query(
        "telemetry",
        "SELECT count(seq), count(temperature_c), count(status), min(seq), max(seq) FROM telemetry GROUP BY device_id",
    );
    let series = v["results"][0]["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "{v}");
    assert_eq!(series[0]["tags"]["device_id"], "device-001", "{v}");
    assert_eq!(
        series[0]["values"][0].as_array().unwrap()[1..],
        [5000, 5000, 5000, 0, 4999].map(serde_json::Value::from),
        "{v}"
    );
    // Timestamps are the devices' own, in ns; one point per seq.
    let v = influx.query(
        "telemetry",
        "SELECT seq, received_unix_nano FROM telemetry WHERE device_id = 'device-001' LIMIT 3",
    );
    for row in v["results"][0]["series"][0]["values"].as_array().unwrap() {
        let (t, received) = (row[0].as_i64().unwrap(), row[2].as_i64().unwrap());
        assert!(
            t > 1_600_000_000_000_000_000 && received >= t - 60_000_000_000,
            "{row}"
        );
    }
}

/// HTTPS only: `influxs://...?cafile=CA` stores every point (read back over
/// TLS by `sink stats`); the system's roots do not know the private CA, so
/// without `cafile` it is a one-line certificate error.
#[test]
fn influx_over_tls_verifies_the_server() {
    let broker = Broker::start();
    common::ok(&common::run(
        broker
            .mqttkit()
            .args(["pki", "issue", "influx", "--server", "--host", "127.0.0.1"]),
        Duration::from_secs(30),
    ));
    let certs = broker.certs();
    let influx =
        Influx::start_with_tls(Some((&certs.join("influx.crt"), &certs.join("influx.key"))));
    let base = format!("influxs://127.0.0.1:{}/telemetry", influx.port);
    let url = format!("{base}?cafile={}", certs.join("ca.crt").display());

    let mut sink = SinkProc::start(&broker, &url, &["--count", "300"], &[]);
    sink.wait_subscribed();
    common::ok(&common::run(
        broker
            .mqttkit()
            .args(["pub", "telemetry", "--count", "300"]),
        Duration::from_secs(60),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "sink still running: {}",
            sink.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sink.child.wait().unwrap().success(), "{}", sink.stderr());
    assert_eq!(rows(&broker, &url, &[]), 300);

    let o = common::run(
        broker.mqttkit().args(["sink", "stats", &base]),
        Duration::from_secs(30),
    );
    let err = common::stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// The poison flow into InfluxDB: a NaN/+Inf reading keeps its other fields
/// and names the missing ones in `nonfinite` (line protocol has no NaN);
/// quarantined messages are counted in the `rejected` measurement and kept
/// whole (payload, prefix and hash) in out/dead-letter/rejected.jsonl.
#[test]
fn influx_quarantines_poison_and_flags_nan() {
    let influx = Influx::start();
    let broker = sink_support::poison_broker();
    let url = format!("influx://127.0.0.1:{}/telemetry", influx.port);
    poison_flow(&broker, &url, &[], None);

    let v = influx.query(
        "telemetry",
        &format!("SELECT count(seq), count(temperature_c), count(pressure_hpa), count(nonfinite) FROM telemetry WHERE device_id = '{POISONER}'"),
    );
    // No temperature_c field at all (InfluxQL's count of nothing is null).
    let counts = &v["results"][0]["series"][0]["values"][0];
    assert_eq!(
        [&counts[1], &counts[2], &counts[3], &counts[4]],
        [&2.into(), &serde_json::Value::Null, &2.into(), &2.into()],
        "{v}"
    );
    let v = influx.query("telemetry", "SELECT last(nonfinite) FROM telemetry");
    assert_eq!(
        v["results"][0]["series"][0]["values"][0][1], "temperature_c=NaN,humidity_pct=+Inf",
        "{v}"
    );
    let text = std::fs::read_to_string(broker.out().join("dead-letter/rejected.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "{text}");
    for l in &lines {
        let reason = l["reason"].as_str().unwrap();
        assert!(REASONS.iter().any(|r| reason.contains(r)), "{l}");
        assert_eq!(l["device_id"], POISONER, "{l}");
    }
}
