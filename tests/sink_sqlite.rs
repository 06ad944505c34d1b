//! `sub telemetry --sink sqlite:PATH` against a real mosquitto: nothing lost
//! and nothing doubled across a SIGKILL, a failing store, and bad input.

mod common;
mod sink_support;

use std::time::{Duration, Instant};

use common::Broker;
use sink_support::{kill_restart_flow, poison_flow, rows, SinkProc, POISONER, REASONS};

#[test]
fn sqlite_keeps_every_row_once_across_sigkill() {
    let broker = Broker::start();
    let url = format!("sqlite:{}", broker.path().join("telemetry.db").display());
    kill_restart_flow(&broker, &url, 5000, &[]);

    // The text form names the device and shows no gaps.
    let o = common::run(
        broker.mqttkit().args(["sink", "stats", &url]),
        Duration::from_secs(30),
    );
    let text = common::stdout(common::ok(&o));
    assert!(text.contains("5000 rows, 1 devices"), "{text}");
    assert!(
        text.contains("device-001") && !text.contains("gaps:"),
        "{text}"
    );
}

#[test]
fn a_failing_store_is_retried_and_nothing_is_acknowledged_meanwhile() {
    let broker = Broker::start();
    let db = broker.path().join("t.db");
    let url = format!("sqlite:{}", db.display());
    let publish = |start: u64| {
        let mut c = broker.mqttkit();
        c.args([
            "pub",
            "telemetry",
            "--out",
            "out",
            "--count",
            "300",
            "--start-seq",
        ])
        .arg(start.to_string());
        common::ok(&common::run(&mut c, Duration::from_secs(60)));
    };
    let wait_rows = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while rows(&broker, &url, &[]) < n {
            assert!(Instant::now() < deadline, "fewer than {n} rows");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut sink = SinkProc::start(&broker, &url, &["--batch-ms", "20"], &[]);
    sink.wait_subscribed();
    publish(0);
    wait_rows(300);

    // Another writer holds the database: the sink's commits fail.
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    publish(300);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.stderr().contains("store failed") {
        assert!(
            Instant::now() < deadline,
            "no store failure:\n{}",
            sink.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Crash while failing: whatever was not committed was not acknowledged.
    sink.kill9();
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(rows(&broker, &url, &[]), 300);

    let mut sink = SinkProc::start(&broker, &url, &[], &[]);
    sink.wait_subscribed();
    wait_rows(600);
    sink.terminate();
    let s = sink_support::stats(&broker, &url, &[]);
    assert_eq!(s["rows"], 600, "{s}");
    assert_eq!(s["devices"][0]["missing"], 0, "{s}");
}

#[test]
fn sigterm_commits_what_arrived_and_count_stops_after_n() {
    let broker = Broker::start();
    let url = format!("sqlite:{}", broker.path().join("c.db").display());
    // A long batch window: only SIGTERM's flush can commit these in time.
    let mut sink = SinkProc::start(&broker, &url, &["--batch-ms", "60000"], &[]);
    sink.wait_subscribed();
    // A payload that is not Telemetry can never be stored: reported and acknowledged.
    let mut garbage = std::process::Command::new("mosquitto_pub");
    garbage
        .args(common::mosquitto_tls_args(&broker, Some("device-001")))
        .args([
            "-q",
            "1",
            "-t",
            "devices/device-001/telemetry",
            "-m",
            "not a protobuf message",
        ]);
    common::ok(&common::run(&mut garbage, Duration::from_secs(30)));
    let mut c = broker.mqttkit();
    c.args(["pub", "telemetry", "--out", "out", "--count", "50"]);
    common::ok(&common::run(&mut c, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rows(&broker, &url, &[]),
        0,
        "committed before the batch closed"
    );
    sink.terminate();
    assert_eq!(rows(&broker, &url, &[]), 50);
    assert!(
        sink.stderr().contains("stored 50 messages"),
        "{}",
        sink.stderr()
    );

    // --count N: exactly N stored, the rest left with the broker.
    let mut c = broker.mqttkit();
    c.args([
        "pub",
        "telemetry",
        "--out",
        "out",
        "--count",
        "40",
        "--start-seq",
        "50",
    ]);
    common::ok(&common::run(&mut c, Duration::from_secs(60)));
    let mut c = broker.mqttkit();
    c.args([
        "sub",
        "telemetry",
        "--out",
        "out",
        "--sink",
        &url,
        "--count",
        "25",
    ]);
    let o = common::run(&mut c, Duration::from_secs(60));
    assert!(
        common::stderr(common::ok(&o)).contains("stored 25 messages"),
        "{}",
        common::stderr(&o)
    );
    let mut c = broker.mqttkit();
    c.args([
        "sub",
        "telemetry",
        "--out",
        "out",
        "--sink",
        &url,
        "--count",
        "15",
    ]);
    common::ok(&common::run(&mut c, Duration::from_secs(60)));
    let s = sink_support::stats(&broker, &url, &[]);
    assert_eq!(s["rows"], 90, "{s}");
    assert_eq!(s["devices"][0]["last_seq"], 89, "{s}");
}

#[test]
fn bad_sinks_fail_in_one_line_before_subscribing() {
    // No broker at all: the sink must complain about the store first.
    let broker = Broker::start_with(common::BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let closed = common::free_port();
    let missing_dir = broker.path().join("no/such/dir/t.db");
    for (url, expect) in [
        (
            "mysql://u@127.0.0.1/db".to_string(),
            "unknown scheme 'mysql'",
        ),
        (
            "timestream://only-db".to_string(),
            "expected timestream://DATABASE/TABLE",
        ),
        (
            format!("sqlite:{}", missing_dir.display()),
            "does not exist",
        ),
        // Read-only even for root.
        (
            "sqlite:/proc/mqttkit-sink-test.db".to_string(),
            "--sink sqlite:/proc/mqttkit-sink-test.db",
        ),
        (
            format!("postgres://postgres@127.0.0.1:{closed}/db"),
            "cannot connect",
        ),
        (
            format!("influx://127.0.0.1:{closed}/db"),
            "cannot reach InfluxDB",
        ),
    ] {
        let mut c = broker.mqttkit();
        c.args([
            "sub",
            "telemetry",
            "--out",
            "out",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(closed.to_string())
        .args(["--sink", &url]);
        let o = common::run(&mut c, Duration::from_secs(60));
        let err = common::stderr(&o);
        assert!(!o.status.success(), "{url}: succeeded");
        assert!(err.contains(expect), "{url}: {err}");
        assert!(err.contains("--sink"), "{url}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{url}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Stats of a path that does not exist does not create it.
    let o = common::run(
        broker.mqttkit().args(["sink", "stats", "sqlite:nope.db"]),
        Duration::from_secs(30),
    );
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("does not exist"),
        "{}",
        common::stderr(&o)
    );
    assert!(!broker.path().join("nope.db").exists());
}

#[test]
fn qos0_sink_stores_what_arrives() {
    let broker = Broker::start();
    let url = format!("sqlite:{}", broker.path().join("q0.db").display());
    let mut sink = SinkProc::start(&broker, &url, &["--qos", "0", "--batch-ms", "20"], &[]);
    sink.wait_subscribed();
    assert!(sink.stderr().contains("QoS 0"), "{}", sink.stderr());
    let mut c = broker.mqttkit();
    c.args(["pub", "telemetry", "--out", "out", "--count", "200"]);
    common::ok(&common::run(&mut c, Duration::from_secs(60)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows(&broker, &url, &[]) < 200 {
        assert!(Instant::now() < deadline, "{}", sink.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    sink.terminate();
    assert!(
        sink.stderr().contains("stored 200 messages"),
        "{}",
        sink.stderr()
    );
}

#[test]
fn json_with_a_sink_is_a_one_line_error_before_anything_runs() {
    let broker = Broker::start();
    let db = broker.path().join("j.db");
    let url = format!("sqlite:{}", db.display());
    let mut c = broker.mqttkit();
    c.args(["sub", "telemetry", "--out", "out", "--sink", &url, "--json"]);
    let o = common::run(&mut c, Duration::from_secs(30));
    let err = common::stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--json: not used with --sink"), "{err}");
    assert!(
        err.contains("sink stats"),
        "names the way to read rows: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!db.exists(), "the store was opened anyway");
    // The same device-id check as `sub` without a sink.
    let mut c = broker.mqttkit();
    c.args(["sub", "telemetry", "--out", "out", "--sink", &url])
        .args(["--device-id", "a\tb"]);
    let o = common::run(&mut c, Duration::from_secs(30));
    let err = common::stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--device-id"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!db.exists(), "the store was opened anyway");
}

#[test]
fn sink_gives_up_after_reconnect_timeout_without_a_broker() {
    let broker = Broker::start();
    let url = format!("sqlite:{}", broker.path().join("r.db").display());
    let mut sink = SinkProc::start(&broker, &url, &["--reconnect-timeout", "1"], &[]);
    sink.wait_subscribed();
    broker.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = sink.child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            sink.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = sink.stderr();
    assert!(!status.success(), "{err}");
    assert!(err.contains("see --reconnect-timeout"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Two devices publish 2,000 QoS 1 messages each while a third sends a
/// 300 KiB message, a NaN/+Inf reading, an empty payload and garbage, once
/// normally and once retained: the sink stores every good row, keeps NaN as
/// NULL plus a flag, quarantines the rest in `rejected`; a plain `sub`
/// alongside prints the good ones and warns about the bad; neither reconnects.
#[test]
fn poison_messages_are_quarantined_and_never_block() {
    let broker = sink_support::poison_broker();
    let db = broker.path().join("p.db");
    let url = format!("sqlite:{}", db.display());
    let dl = broker.path().join("dl-sub");
    let mut cmd = broker.mqttkit();
    cmd.args([
        "sub",
        "telemetry",
        "--out",
        "out",
        "--json",
        "--dead-letter",
    ])
    .arg(&dl);
    let mut sub = common::Proc::spawn(cmd);
    sub.wait_stderr("subscribed to");

    poison_flow(&broker, &url, &[], None);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let nan: Vec<(bool, bool, String)> = conn
        .prepare("SELECT temperature_c IS NULL, humidity_pct IS NULL, nonfinite FROM telemetry WHERE device_id = ?1 ORDER BY seq")
        .unwrap()
        .query_map([POISONER], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let flag = "temperature_c=NaN,humidity_pct=+Inf".to_string();
    assert_eq!(nan, vec![(true, true, flag.clone()), (true, true, flag)]);
    let rejected: Vec<(String, i64, bool, i64)> = conn
        .prepare("SELECT reason, size, payload_truncated, length(payload) FROM rejected ORDER BY received_unix_nano")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rejected.len(), 7, "{rejected:?}");
    for (reason, size, truncated, kept) in &rejected {
        let big = reason.contains(REASONS[2]);
        assert_eq!(*truncated, big, "{reason}");
        assert!(
            !big || (*size > 300 * 1024 && *kept == 1024),
            "{reason} {size} {kept}"
        );
        assert!(big || kept == size, "{reason} {size} {kept}");
        assert!(REASONS.iter().any(|r| reason.contains(r)), "{reason}");
    }

    // The plain subscriber printed every good reading (NaN as null) and
    // quarantined the rest in its own dead-letter file.
    sub.wait_for(Duration::from_secs(30), "4002 lines", |p| {
        p.lines().len() >= 4002
    });
    sub.signal(nix::sys::signal::Signal::SIGINT);
    let (status, lines, err) = sub.finish(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert_eq!(lines.len(), 4002, "{err}");
    let nan_lines: Vec<serde_json::Value> = (lines.iter())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["device_id"] == POISONER)
        .collect();
    assert_eq!(nan_lines.len(), 2, "{nan_lines:?}");
    assert!(nan_lines[0]["temperature_c"].is_null(), "{nan_lines:?}");
    for reason in REASONS {
        assert_eq!(err.matches(reason).count(), 2, "{reason}:\n{err}");
    }
    assert!(sink_support::reconnects(&err) <= 1, "{err}");
    let text = std::fs::read_to_string(dl.join("rejected.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");

    // One that starts now gets the retained 300 KiB message: warned, kept, on.
    let dl2 = broker.path().join("dl-late");
    let mut cmd = broker.mqttkit();
    cmd.args(["sub", "telemetry", "--out", "out", "--dead-letter"])
        .arg(&dl2);
    let mut late = common::Proc::spawn(cmd);
    late.wait_stderr(REASONS[2]);
    late.signal(nix::sys::signal::Signal::SIGINT);
    let (status, _, err) = late.finish(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dl2.join("rejected.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(
        (line["truncated"].as_bool(), line["device_id"].as_str()),
        (Some(true), Some(POISONER))
    );
    assert_eq!(line["sha256"].as_str().map(str::len), Some(64), "{line}");
}

/// A `--max-packet` below a message the broker accepted ends the consumer
/// with an error naming the flag, instead of reconnecting over and over.
#[test]
fn a_message_over_max_packet_is_an_error_not_a_reconnect_loop() {
    let broker = Broker::start();
    let mut cmd = broker.mqttkit();
    cmd.args(["sub", "telemetry", "--out", "out", "--max-packet", "1KiB"]);
    let mut sub = common::Proc::spawn(cmd);
    sub.wait_stderr("subscribed to");
    let big = broker.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 4096]).unwrap();
    let mut mp = std::process::Command::new("mosquitto_pub");
    mp.args(common::mosquitto_tls_args(&broker, Some("device-001")))
        .args(["-q", "1", "-t", "devices/device-001/telemetry", "-f"])
        .arg(&big);
    common::ok(&common::run(&mut mp, Duration::from_secs(30)));
    let (status, _, err) = sub.finish(Duration::from_secs(20));
    assert!(!status.success(), "{err}");
    assert!(err.contains("larger than --max-packet 1024"), "{err}");
    assert!(!err.contains("reconnect"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
