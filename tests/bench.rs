//! `mqttkit bench` against a real mosquitto with mTLS: counts add up, nothing
//! is lost at QoS 1, and latency numbers respect known bounds. Small numbers,
//! no timing assertions (speed is measured by benches/compare.sh).

mod common;

use std::time::{Duration, Instant};

use common::{ok, run, stderr, stdout, Broker, BrokerOptions};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn bench_json(broker: &Broker, args: &[&str]) -> (Value, Duration, std::process::Output) {
    let mut cmd = broker.mqttkit();
    cmd.arg("bench").args(args).arg("--json");
    let t0 = Instant::now();
    let out = run(&mut cmd, LIMIT);
    let wall = t0.elapsed();
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| {
        panic!(
            "bench --json printed no JSON ({e})\nstdout:\n{}\nstderr:\n{}",
            stdout(&out),
            stderr(&out)
        )
    });
    (v, wall, out)
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// Latency percentiles are ordered, never negative, and no message can take
/// longer than the whole run that sent and received it.
fn assert_latency_sane(v: &Value, wall: Duration) {
    let (min, p50, p95, p99, max) = (
        f(v, "/latency/min_ms"),
        f(v, "/latency/p50_ms"),
        f(v, "/latency/p95_ms"),
        f(v, "/latency/p99_ms"),
        f(v, "/latency/max_ms"),
    );
    assert!(min >= 0.0 && p50 >= min, "{v}");
    assert!(p50 <= p95 && p95 <= p99 && p99 <= max, "{v}");
    assert!(
        max <= wall.as_secs_f64() * 1000.0,
        "max {max} ms > run {wall:?}"
    );
    assert_eq!(u(v, "/latency/below_zero"), 0, "{v}");
}

#[test]
fn qos1_per_device_identities_counts_add_up_and_nothing_is_lost() {
    let broker = Broker::start();
    let (v, wall, out) = bench_json(
        &broker,
        &[
            "--devices",
            "20",
            "--subscribers",
            "2",
            "--qos",
            "1",
            "--count",
            "15",
        ],
    );
    ok(&out);
    assert_eq!(v["identities"], "per-device", "{v}");
    assert_eq!(u(&v, "/connect/connected"), 20);
    assert_eq!(u(&v, "/connect/failed"), 0);
    assert_eq!(u(&v, "/published"), 300);
    assert_eq!(u(&v, "/acked"), 300);
    assert_eq!(u(&v, "/expected"), 600);
    assert_eq!(u(&v, "/delivered"), 600);
    assert_eq!(u(&v, "/lost"), 0);
    assert_eq!(u(&v, "/duplicated"), 0);
    assert_eq!(v["ok"], true);
    let devices = v["per_device"].as_array().unwrap();
    assert_eq!(devices.len(), 20);
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d["device_id"], format!("bench-{i:04}"));
        assert_eq!(u(d, "/published"), 15, "{d}");
        assert_eq!(u(d, "/acked"), 15, "{d}");
        assert_eq!(u(d, "/delivered"), 30, "{d}");
        assert_eq!(u(d, "/lost"), 0, "{d}");
    }
    assert!(f(&v, "/connect/p50_ms") <= f(&v, "/connect/p99_ms"));
    assert!(f(&v, "/connect/handshakes_per_s") > 0.0);
    assert!(u(&v, "/memory/peak_rss_kib") > 0);
    assert!(f(&v, "/memory/per_connection_kib") > 0.0);
    assert_latency_sane(&v, wall);
    // The broker saw each device under its own certificate CN (its ACL user).
    let log = broker.log();
    assert!(log.contains("u'bench-0007'"), "broker log:\n{log}");
}

#[test]
fn fixed_rate_run_has_latency_within_the_run() {
    let broker = Broker::start();
    let (v, wall, out) = bench_json(
        &broker,
        &[
            "--devices",
            "5",
            "--subscribers",
            "1",
            "--rate",
            "20",
            "--duration",
            "2",
        ],
    );
    ok(&out);
    let published = u(&v, "/published");
    assert!(published >= 5, "{v}");
    assert_eq!(u(&v, "/acked"), published);
    assert_eq!(u(&v, "/delivered"), published);
    assert_eq!(u(&v, "/lost"), 0);
    assert_eq!(f(&v, "/rate_per_device"), 20.0);
    assert_latency_sane(&v, wall);
}

#[test]
fn qos0_padded_payloads_account_for_every_message() {
    let broker = Broker::start();
    let (v, wall, out) = bench_json(
        &broker,
        &[
            "--devices",
            "10",
            "--subscribers",
            "2",
            "--qos",
            "0",
            "--count",
            "20",
            "--payload",
            "512",
        ],
    );
    ok(&out);
    assert_eq!(u(&v, "/published"), 200);
    assert_eq!(u(&v, "/acked"), 0);
    // At QoS 0 loss is allowed but must be accounted for.
    assert_eq!(
        u(&v, "/delivered") - u(&v, "/duplicated") + u(&v, "/lost"),
        400,
        "{v}"
    );
    assert_eq!(v["payload"], "512 bytes");
    assert_latency_sane(&v, wall);
}

#[test]
fn without_the_ca_key_devices_share_the_profile_identity() {
    let broker = Broker::start();
    let key = broker.certs().join("ca.key");
    std::fs::rename(&key, broker.certs().join("ca.key.away")).unwrap();
    let (v, _, out) = bench_json(
        &broker,
        &["--devices", "3", "--subscribers", "1", "--count", "10"],
    );
    ok(&out);
    assert_eq!(v["identities"], "shared", "{v}");
    assert!(stderr(&out).contains("'device-001'"), "{}", stderr(&out));
    assert_eq!(u(&v, "/delivered"), 30);
    assert_eq!(u(&v, "/lost"), 0);
    // Still tracked per simulated device, from the payload.
    for d in v["per_device"].as_array().unwrap() {
        assert_eq!(u(d, "/delivered"), 10, "{d}");
    }
}

#[test]
fn no_broker_and_bad_flags_are_one_line_errors() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let port = common::free_port().to_string();
    let out = run(
        broker
            .mqttkit()
            .args(["bench", "--host", "127.0.0.1", "--port", &port]),
        LIMIT,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("connection refused"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = run(broker.mqttkit().args(["bench", "--rate", "0"]), LIMIT);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--rate 0"), "{}", stderr(&out));

    let out = run(broker.mqttkit().args(["bench", "--payload", "10"]), LIMIT);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("out of range"), "{}", stderr(&out));
}
