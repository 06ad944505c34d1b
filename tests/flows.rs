//! `pub`/`sub` telemetry and command flows against a real mosquitto on
//! loopback with client certificates from `pki init`.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, Proc};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn seqs(values: &[Value]) -> Vec<u64> {
    values
        .iter()
        .map(|v| v["seq"].as_u64().expect("seq"))
        .collect()
}

/// `sub telemetry ARGS` started, and subscribed.
fn start_sub(b: &Broker, args: &[&str]) -> Proc {
    let mut c = b.mqttkit();
    c.args(["sub", "telemetry", "--json"]).args(args);
    let mut p = Proc::spawn(c);
    p.wait_stderr("subscribed to");
    p
}

fn pub_telemetry(b: &Broker, args: &[&str]) -> (ExitStatus, Value, String) {
    let mut c = b.mqttkit();
    c.args(["pub", "telemetry", "--json"]).args(args);
    let (status, out, err) = Proc::spawn(c).finish(LIMIT);
    let summary = out
        .last()
        .map(|l| serde_json::from_str(l).expect("summary JSON"))
        .unwrap_or(Value::Null);
    (status, summary, err)
}

#[test]
fn qos1_2000_messages_arrive_exactly_once() {
    let b = Broker::start();
    let sub = start_sub(&b, &["--count", "2000"]);
    let (status, summary, err) = pub_telemetry(&b, &["--count", "2000", "--qos", "1"]);
    assert!(status.success(), "pub failed: {err}");
    assert_eq!(summary["sent"], 2000, "{summary}");
    assert_eq!(summary["acked"], 2000, "{summary}");
    assert_eq!(summary["unacked"], 0, "{summary}");
    assert!(err.contains("acked 2000"), "summary line on stderr: {err}");

    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "sub failed: {err}");
    let msgs = json_lines(&lines);
    assert_eq!(msgs.len(), 2000);
    let mut s = seqs(&msgs);
    s.sort_unstable();
    assert_eq!(s, (0..2000).collect::<Vec<u64>>(), "each seq exactly once");
    for m in &msgs {
        assert_eq!(m["topic"], "devices/device-001/telemetry");
        assert_eq!(m["device_id"], "device-001");
        assert!(m["time_unix_nano"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        let t = m["temperature_c"].as_f64().unwrap();
        assert!((-20.0..=60.0).contains(&t), "{m}");
        assert!(m["status"].as_str().unwrap().starts_with("STATUS_"));
    }
}

/// Many packets per TLS record: the publisher's PUBLISHes and the
/// subscriber's PUBACKs are written in batches (rumqttc patched, see
/// vendor/rumqttc/MQTTKIT-PATCH.md), not one record and one write each.
#[test]
fn publishes_and_acks_are_batched_into_few_tls_records() {
    const N: u64 = 3000;
    let b = Broker::start();
    let to_pub = common::TlsRecordCounter::start(b.port);
    let to_sub = common::TlsRecordCounter::start(b.port);
    let (pub_port, sub_port) = (to_pub.port.to_string(), to_sub.port.to_string());
    let n = N.to_string();
    let relayed = ["--host", "127.0.0.1", "--qos", "1", "--count", &n];
    let sub = start_sub(&b, &[&relayed[..], &["--port", &sub_port]].concat());
    let (status, summary, err) =
        pub_telemetry(&b, &[&relayed[..], &["--port", &pub_port]].concat());
    assert!(status.success(), "pub failed: {err}");
    assert_eq!(summary["acked"], N, "{summary}");
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "sub failed: {err}");
    let mut s = seqs(&json_lines(&lines));
    s.sort_unstable();
    assert_eq!(s, (0..N).collect::<Vec<u64>>(), "each seq exactly once");

    // Unbatched, each side sends at least one record per message.
    let (pub_records, sub_records) = (to_pub.records(), to_sub.records());
    eprintln!("TLS records for {N} messages: publisher {pub_records}, subscriber {sub_records}");
    assert!(
        pub_records <= N / 8,
        "the publisher sent {pub_records} TLS records for {N} messages"
    );
    assert!(
        sub_records <= N / 8,
        "the subscriber sent {sub_records} TLS records to acknowledge {N} messages"
    );
}

#[test]
fn garbage_payload_is_a_warning_and_the_next_message_is_printed() {
    let b = Broker::start();
    let sub = start_sub(&b, &["--count", "1"]);
    // 0xff... is an unterminated varint: no protobuf message decodes from it.
    let garbage = b.path().join("garbage.bin");
    std::fs::write(&garbage, [0xffu8; 16]).unwrap();
    let mut mp = Command::new("mosquitto_pub");
    mp.args(common::mosquitto_tls_args(&b, Some("device-001")))
        .args(["-t", "devices/device-001/telemetry", "-q", "1", "-f"])
        .arg(&garbage);
    common::ok(&common::run(&mut mp, LIMIT));

    let (status, _, err) = pub_telemetry(&b, &["--count", "1", "--start-seq", "7"]);
    assert!(status.success(), "{err}");
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "sub must survive garbage: {err}");
    assert!(
        err.contains(
            "warning: devices/device-001/telemetry: 16-byte message rejected: not a Telemetry message"
        ),
        "{err}"
    );
    let msgs = json_lines(&lines);
    assert_eq!(seqs(&msgs), vec![7], "only the valid message is printed");
}

#[test]
fn one_device_filter_and_per_device_identities() {
    let b = Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into()],
        ..Default::default()
    });
    let sub = start_sub(&b, &["--device-id", "device-002", "--count", "5"]);
    // device-001's messages must not show up in device-002's stream.
    let (status, _, err) = pub_telemetry(&b, &["--device-id", "device-001", "--count", "20"]);
    assert!(status.success(), "{err}");
    let (status, summary, err) = pub_telemetry(&b, &["--device-id", "device-002", "--count", "5"]);
    assert!(status.success(), "{err}");
    assert_eq!(summary["topic"], "devices/device-002/telemetry");
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "{err}");
    let msgs = json_lines(&lines);
    assert_eq!(seqs(&msgs), vec![0, 1, 2, 3, 4]);
    assert!(msgs.iter().all(|m| m["device_id"] == "device-002"));
}

#[test]
fn human_output_names_device_seq_and_readings() {
    let b = Broker::start();
    let mut c = b.mqttkit();
    c.args(["sub", "telemetry", "--count", "3"]);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to");
    let (status, _, err) = pub_telemetry(&b, &["--count", "3"]);
    assert!(status.success(), "{err}");
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "{err}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("device-001 seq={i} ")), "{l}");
        assert!(
            l.contains("temp=") && l.contains("rssi=") && l.contains("dBm"),
            "{l}"
        );
    }
}

#[test]
fn commands_round_trip_server_to_device() {
    let b = Broker::start();
    let mut c = b.mqttkit();
    c.args([
        "sub",
        "command",
        "--device-id",
        "device-001",
        "--count",
        "2",
        "--json",
    ]);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to devices/device-001/commands");

    let mut sent = Vec::new();
    for (name, params) in [
        ("set_interval", vec!["seconds=10", "mode=eco"]),
        ("reboot", vec![]),
    ] {
        let mut c = b.mqttkit();
        c.args([
            "pub",
            "command",
            "--device-id",
            "device-001",
            "--name",
            name,
            "--json",
        ]);
        for p in params {
            c.args(["--param", p]);
        }
        let o = common::ok(&common::run(&mut c, LIMIT)).clone();
        let v: Value = serde_json::from_str(common::stdout(&o).trim()).expect("sent JSON");
        assert_eq!(v["topic"], "devices/device-001/commands");
        sent.push(v);
    }
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "{err}");
    let got = json_lines(&lines);
    assert_eq!(got.len(), 2);
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!(g["id"], s["id"]);
        assert_eq!(g["name"], s["name"]);
        assert_eq!(g["device_id"], "device-001");
        assert_eq!(g["params"], s["params"]);
    }
    let params: BTreeMap<String, String> =
        serde_json::from_value(got[0]["params"].clone()).unwrap();
    assert_eq!(params["seconds"], "10");
    assert_eq!(params["mode"], "eco");
    assert_eq!(got[0]["id"].as_str().unwrap().len(), 36, "a UUID");
}

#[test]
fn broker_restart_during_qos1_stream_loses_nothing() {
    const N: u64 = 3000;
    let b = Broker::start();
    let mut sub = start_sub(&b, &["--persistent"]);
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "telemetry",
        "--json",
        "--count",
        &N.to_string(),
        "--rate",
        "1000",
    ]);
    let mut publisher = Proc::spawn(c);
    // Stop the broker in the middle of the stream, then bring it back.
    sub.wait_for(LIMIT, "the first 800 messages", |p| p.lines().len() >= 800);
    b.stop();
    std::thread::sleep(Duration::from_millis(500));
    b.restart();
    publisher.wait_stderr("reconnected");
    let (status, out, err) = publisher.finish(LIMIT);
    assert!(status.success(), "publisher must exit 0: {err}");
    let summary: Value = serde_json::from_str(out.last().expect("summary")).unwrap();
    assert_eq!(summary["acked"], N, "{summary}");
    assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");

    sub.wait_for(LIMIT, "every seq", |p| {
        let got: std::collections::HashSet<u64> = p
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        got.len() as u64 == N
    });
    sub.signal(nix::sys::signal::Signal::SIGINT);
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "subscriber ends cleanly on Ctrl-C: {err}");
    assert!(err.contains("reconnected"), "{err}");
    let mut s = seqs(&json_lines(&lines));
    s.sort_unstable();
    s.dedup();
    assert_eq!(
        s,
        (0..N).collect::<Vec<u64>>(),
        "no gaps (duplicates allowed)"
    );
}

#[test]
fn persistent_subscriber_gets_what_was_sent_while_it_was_away() {
    let b = Broker::start();
    // First visit: creates the session and its subscription, then leaves.
    let first = start_sub(&b, &["--persistent", "--client-id", "ops-1"]);
    first.signal(nix::sys::signal::Signal::SIGINT);
    let (status, _, err) = first.finish(LIMIT);
    assert!(status.success(), "{err}");

    let (status, _, err) = pub_telemetry(&b, &["--count", "10"]);
    assert!(status.success(), "{err}");

    let mut c = b.mqttkit();
    c.args([
        "sub",
        "telemetry",
        "--json",
        "--persistent",
        "--client-id",
        "ops-1",
        "--count",
        "10",
    ]);
    let (status, lines, err) = Proc::spawn(c).finish(LIMIT);
    assert!(status.success(), "{err}");
    assert_eq!(seqs(&json_lines(&lines)), (0..10).collect::<Vec<u64>>());
}

#[test]
fn strict_durability_keeps_acked_messages_through_a_broker_crash() {
    let b = Broker::start_with(BrokerOptions {
        up_args: vec!["--durability".into(), "strict".into()],
        ..Default::default()
    });
    assert!(
        std::fs::read_to_string(b.out().join("mosquitto/mosquitto.conf"))
            .unwrap()
            .contains("\nautosave_on_changes true\nautosave_interval 1\n")
    );
    // A persistent session the broker must queue for while it is away.
    let first = start_sub(&b, &["--persistent", "--client-id", "ops-1"]);
    first.signal(nix::sys::signal::Signal::SIGINT);
    let (status, _, err) = first.finish(LIMIT);
    assert!(status.success(), "{err}");

    let (status, summary, err) = pub_telemetry(&b, &["--count", "500", "--qos", "1"]);
    assert!(status.success(), "{err}");
    assert_eq!(summary["acked"], 500, "{summary}");
    // SIGKILL right after the last PUBACK: only the snapshot on disk survives.
    b.kill();
    b.restart();

    let mut c = b.mqttkit();
    c.args(["sub", "telemetry", "--json", "--persistent"])
        .args(["--client-id", "ops-1", "--count", "500"]);
    let (status, lines, err) = Proc::spawn(c).finish(LIMIT);
    assert!(status.success(), "{err}");
    let mut got = seqs(&json_lines(&lines));
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, (0..500).collect::<Vec<u64>>());
}

#[test]
fn ctrl_c_ends_an_endless_publisher_cleanly() {
    let b = Broker::start();
    let mut sub = start_sub(&b, &[]);
    let mut c = b.mqttkit();
    c.args(["pub", "telemetry", "--json", "--rate", "200"]);
    let publisher = Proc::spawn(c);
    sub.wait_for(LIMIT, "some messages", |p| p.lines().len() >= 20);
    publisher.signal(nix::sys::signal::Signal::SIGINT);
    let (status, out, err) = publisher.finish(LIMIT);
    assert!(status.success(), "{err}");
    let summary: Value = serde_json::from_str(out.last().expect("summary")).unwrap();
    assert_eq!(summary["interrupted"], true);
    assert_eq!(summary["sent"], summary["acked"], "{summary}");
    assert!(summary["acked"].as_u64().unwrap() >= 20);
}

#[test]
fn clear_errors_before_and_at_connect() {
    let b = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let certs = b.certs();
    let cafile = certs.join("ca.crt");
    let port = common::free_port().to_string();
    let conn = |c: &mut Command| {
        c.args(["--host", "127.0.0.1", "--port", &port, "--cafile"])
            .arg(&cafile)
            .arg("--cert")
            .arg(certs.join("device-001.crt"))
            .arg("--key")
            .arg(certs.join("device-001.key"));
    };
    // Nothing listens: a one-line error, quickly, non-zero.
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "telemetry",
        "--device-id",
        "device-001",
        "--count",
        "1",
    ]);
    conn(&mut c);
    let o = common::run(&mut c, LIMIT);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(err.contains("connection refused"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut c = b.mqttkit();
    c.args(["pub", "telemetry", "--device-id", "a/b", "--count", "1"]);
    conn(&mut c);
    let err = common::stderr(&common::run(&mut c, LIMIT));
    assert!(err.contains("--device-id 'a/b'"), "{err}");

    let mut c = b.mqttkit();
    c.args(["pub", "telemetry", "--device-id", "d", "--rate", "0"]);
    conn(&mut c);
    let err = common::stderr(&common::run(&mut c, LIMIT));
    assert!(err.contains("--rate 0"), "{err}");

    let mut c = b.mqttkit();
    c.args([
        "pub",
        "command",
        "--device-id",
        "d",
        "--name",
        "x",
        "--param",
        "novalue",
    ]);
    let err = common::stderr(&common::run(&mut c, LIMIT));
    assert!(err.contains("KEY=VALUE"), "{err}");
}

#[test]
fn publisher_resends_when_the_broker_lost_its_session() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    const N: u64 = 2000;
    let b = Broker::start();
    let mut c = b.mqttkit();
    c.args([
        "pub",
        "telemetry",
        "--json",
        "--count",
        &N.to_string(),
        "--rate",
        "1000",
        "--window",
        "100",
    ]);
    let mut publisher = Proc::spawn(c);
    std::thread::sleep(Duration::from_millis(300));
    // Frozen, the broker acknowledges nothing: the window fills with
    // unacknowledged messages. Killed, it saves no session for us.
    let pid = Pid::from_raw(b.pid());
    kill(pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    kill(pid, Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + LIMIT;
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    }) {
        assert!(Instant::now() < deadline, "mosquitto did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    let data = b.out().join("mosquitto/data");
    if let Ok(entries) = std::fs::read_dir(&data) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    b.restart();
    publisher.wait_stderr("the broker kept no session; re-sending");
    let (status, out, err) = publisher.finish(LIMIT);
    assert!(status.success(), "publisher must exit 0: {err}");
    let summary: Value = serde_json::from_str(out.last().expect("summary")).unwrap();
    assert_eq!(summary["acked"], N, "{summary}");
    assert_eq!(summary["unacked"], 0, "{summary}");
    assert!(summary["resent"].as_u64().unwrap() >= 1, "{summary}");
}

/// A broker that stops reading (SIGSTOP) while `pub` is mid-stream: writes
/// run under rumqttc's flush timeout (batches stop before the codec would
/// write to the socket by itself), so `pub` notices, retries for
/// --reconnect-timeout and exits non-zero instead of hanging on a full socket.
#[test]
fn a_broker_that_stops_reading_ends_pub_with_an_error() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let b = Broker::start();
    let broker = Pid::from_raw(b.pid());
    let mut c = b.mqttkit();
    c.args(["pub", "telemetry", "--qos", "0", "--count", "2000000"])
        .args(["--reconnect-timeout", "2"]);
    let publisher = Proc::spawn(c);
    std::thread::sleep(Duration::from_millis(300));
    kill(broker, Signal::SIGSTOP).expect("SIGSTOP mosquitto");
    let started = Instant::now();
    let (status, _, err) = publisher.finish(Duration::from_secs(90));
    kill(broker, Signal::SIGCONT).expect("SIGCONT mosquitto");
    assert!(!status.success(), "{err}");
    assert!(err.contains("giving up"), "{err}");
    // Flush timeout (5 s) + one connection attempt (5 s): about 10 s.
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
}

/// A live progress line on a terminal (`script` provides one), none in a pipe.
#[test]
fn pub_shows_progress_on_a_terminal_only() {
    let b = Broker::start();
    let cmd = format!("{} pub telemetry --count 300 --rate 300", common::bin());
    let mut tty = Command::new("script");
    tty.current_dir(b.path())
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("MQTTKIT_OUT")
        .env_remove("MQTTKIT_PROFILE");
    let o = common::run(&mut tty, LIMIT);
    let screen = common::stdout(&o);
    assert!(o.status.success(), "{screen}{}", common::stderr(&o));
    assert!(
        screen.contains("device-001: sent ") && screen.contains(", in flight "),
        "no progress line on the terminal: {screen}"
    );
    assert!(screen.contains("acked 300, unacked 0"), "{screen}");

    let (status, _, err) = pub_telemetry(&b, &["--count", "300", "--rate", "300"]);
    assert!(status.success(), "{err}");
    assert!(!err.contains("in flight"), "progress in a pipe: {err}");
}

#[test]
fn qos0_counts_sent_not_acked() {
    let b = Broker::start();
    let sub = start_sub(&b, &["--count", "100", "--qos", "0"]);
    let (status, summary, err) = pub_telemetry(&b, &["--count", "100", "--qos", "0"]);
    assert!(status.success(), "{err}");
    assert_eq!(summary["qos"], 0, "{summary}");
    assert_eq!(summary["sent"], 100, "{summary}");
    assert_eq!(summary["acked"], 0, "{summary}");
    assert!(err.contains("QoS 0: not acknowledged"), "{err}");
    let (status, lines, err) = sub.finish(LIMIT);
    assert!(status.success(), "{err}");
    assert_eq!(seqs(&json_lines(&lines)), (0..100).collect::<Vec<u64>>());
}

#[test]
fn two_publishers_with_one_client_id_are_told_so() {
    let broker = Broker::start();
    let spawn = || {
        let mut c = broker.mqttkit();
        c.args([
            "pub",
            "telemetry",
            "--device-id",
            "device-001",
            "--rate",
            "100",
            "--count",
            "400",
        ]);
        Proc::spawn(c)
    };
    let first = spawn();
    std::thread::sleep(Duration::from_millis(500));
    let second = spawn();
    // They take the session from each other until one gives up with the reason.
    let (s2, _, e2) = second.finish(LIMIT);
    let (s1, _, e1) = first.finish(LIMIT);
    let msg = "another client is probably connected with the same client id";
    assert!(
        (!s1.success() && e1.contains(msg)) || (!s2.success() && e2.contains(msg)),
        "first: {s1} {e1}\nsecond: {s2} {e2}"
    );
}

/// mosquitto grants a denied subscription and delivers nothing: a device
/// certificate reading all telemetry is warned about before it waits.
#[test]
fn a_device_identity_reading_all_telemetry_is_warned() {
    let b = Broker::start();
    let certs = b.certs();
    let mut sub = b.mqttkit();
    sub.args(["sub", "telemetry", "--cert"])
        .arg(certs.join("device-001.crt"))
        .arg("--key")
        .arg(certs.join("device-001.key"));
    let mut p = Proc::spawn(sub);
    p.wait_stderr("is identity 'device-001', not the server identity 'server'");
    // The server identity itself is not warned about.
    let mut ok_sub = start_sub(&b, &["--count", "1"]);
    ok_sub.wait_stderr("subscribed to devices/+/telemetry");
    assert!(!ok_sub.stderr().contains("warning"), "{}", ok_sub.stderr());
}

#[test]
fn revoking_a_device_while_the_broker_runs_cuts_it_off_and_no_one_else() {
    let b = Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into(), "device-003".into()],
        ..Default::default()
    });
    // `broker up` wrote an empty CRL, so the broker has crlfile from the start.
    let conf = std::fs::read_to_string(b.out().join("mosquitto/mosquitto.conf")).unwrap();
    assert!(conf.contains("\ncrlfile "), "{conf}");
    let publisher = |id: &str| {
        let mut c = b.mqttkit();
        c.args([
            "pub",
            "telemetry",
            "--json",
            "--device-id",
            id,
            "--rate",
            "50",
        ])
        .args(["--reconnect-timeout", "30s"]);
        Proc::spawn(c)
    };
    let mut sub = start_sub(&b, &[]);
    let (p1, mut p2, p3) = (
        publisher("device-001"),
        publisher("device-002"),
        publisher("device-003"),
    );
    sub.wait_for(LIMIT, "telemetry from all three", |s| {
        let lines = s.lines().join("\n");
        ["device-001", "device-002", "device-003"]
            .iter()
            .all(|d| lines.contains(&format!("\"device_id\":\"{d}\"")))
    });
    let mut c = b.mqttkit();
    c.args(["pki", "revoke", "device-002"]);
    let (status, _, err) = Proc::spawn(c).finish(LIMIT);
    assert!(status.success(), "{err}");
    assert!(err.contains("can no longer connect"), "{err}");
    // Within 5 s device-002's connection is gone...
    p2.wait_for(Duration::from_secs(5), "the connection lost", |p| {
        p.stderr().contains("lost")
    });
    // ...and a new one is refused with the "certificate revoked" alert.
    let (status, _, err) = pub_telemetry(&b, &["--device-id", "device-002", "--count", "1"]);
    assert!(!status.success());
    assert!(err.contains("client certificate is revoked"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    for p in [p1, p3] {
        p.signal(nix::sys::signal::Signal::SIGINT);
        let (status, out, err) = p.finish(LIMIT);
        assert!(status.success(), "{err}");
        let summary: Value = serde_json::from_str(out.last().expect("summary")).unwrap();
        assert_eq!(summary["reconnects"], 0, "{summary}");
        assert_eq!(summary["unacked"], 0, "{summary}");
        assert_eq!(summary["sent"], summary["acked"], "{summary}");
    }
    p2.signal(nix::sys::signal::Signal::SIGINT);
    let _ = p2.finish(LIMIT);
    sub.signal(nix::sys::signal::Signal::SIGINT);
    let _ = sub.finish(LIMIT);
}
