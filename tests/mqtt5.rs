//! Issue 18, MQTT 5 against a real mosquitto: acknowledgements that tell the
//! truth (PUBACK/SUBACK 0x87 from the rendered ACL), request/response for
//! commands, user properties and message expiry with an independent paho
//! client, sink workers on a shared subscription, and the fallback to 3.1.1
//! when a broker refuses version 5.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_port, ok, python, run, stderr, stdout, Broker, BrokerOptions, Proc};

mod sink_support;

const T: Duration = Duration::from_secs(60);

fn broker() -> Broker {
    Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into()],
        ..BrokerOptions::default()
    })
}

/// `--cert/--key` of one identity of `broker`.
fn as_identity(b: &Broker, name: &str) -> Vec<String> {
    let c = b.certs();
    vec![
        "--cert".into(),
        c.join(format!("{name}.crt")).display().to_string(),
        "--key".into(),
        c.join(format!("{name}.key")).display().to_string(),
    ]
}

#[test]
fn acknowledgements_name_acl_denials() {
    let b = broker();
    let dev1 = as_identity(&b, "device-001");
    // Denied: device-001 writing device-002's telemetry.
    let o = run(
        b.mqttkit()
            .args([
                "pub",
                "-t",
                "devices/device-002/telemetry",
                "-m",
                "x",
                "-q",
                "1",
            ])
            .args(&dev1),
        T,
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("devices/device-002/telemetry: 0x87 not authorized"),
        "{err}"
    );
    // Allowed, same flags otherwise.
    let o = run(
        b.mqttkit()
            .args([
                "pub",
                "-t",
                "devices/device-001/telemetry",
                "-m",
                "x",
                "-q",
                "1",
            ])
            .args(&dev1),
        T,
    );
    assert!(ok(&o).status.success());
    assert!(!stderr(&o).contains("do not prove"), "{}", stderr(&o));
    // QoS 2: the refusal comes in the PUBREC.
    let o = run(
        b.mqttkit()
            .args([
                "pub",
                "-t",
                "devices/device-002/telemetry",
                "-m",
                "x",
                "-q",
                "2",
            ])
            .args(&dev1),
        T,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not authorized"), "{}", stderr(&o));
    // 3.1.1: mosquitto acknowledges what it drops; the summary says so.
    let o = run(
        b.mqttkit()
            .args([
                "pub",
                "-V",
                "311",
                "-t",
                "devices/device-002/telemetry",
                "-m",
                "x",
                "-q",
                "1",
            ])
            .args(&dev1),
        T,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("MQTT 3.1.1 acknowledgements do not prove authorization"),
        "{}",
        stderr(&o)
    );
    // pub command with a device's certificate.
    let o = run(
        b.mqttkit()
            .args([
                "pub",
                "command",
                "--device-id",
                "device-002",
                "--name",
                "reboot",
            ])
            .args(&dev1),
        T,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("refused the command to devices/device-002/commands: 0x87 not authorized"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `mqttkit sub -t FILTER -C 1 -W 2` as `identity`, over `version`: a
/// refusal ends it at once, a granted subscription when the wait runs out.
fn sub_as(b: &Broker, identity: &[String], version: &str, filter: &str) -> std::process::Output {
    run(
        b.mqttkit()
            .args(["sub", "-V", version, "-t", filter, "-C", "1", "-W", "2"])
            .args(identity),
        T,
    )
}

#[test]
fn subscriptions_outside_the_acl_are_refused() {
    let b = broker();
    let dev1 = as_identity(&b, "device-001");
    // mosquitto's acl_file alone grants every SUBSCRIBE; the plugin that
    // `broker up` loads refuses a filter that matches nothing readable.
    for (version, reason) in [("5", " (0x87 not authorized)"), ("311", "")] {
        let o = sub_as(&b, &dev1, version, "devices/device-002/commands");
        let err = stderr(&o);
        assert!(!o.status.success(), "-V {version}: {err}");
        assert!(
            err.contains(&format!(
                "the broker refused the subscription to devices/device-002/commands{reason} for identity 'device-001'"
            )),
            "-V {version}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A device may not read telemetry, not even its own; nor another's replies.
    for filter in ["devices/device-001/telemetry", "devices/+/replies"] {
        let o = sub_as(&b, &dev1, "5", filter);
        assert!(!o.status.success(), "{filter}: {}", stderr(&o));
        assert!(stderr(&o).contains("0x87 not authorized"), "{}", stderr(&o));
    }
    // Its own commands, a wildcard that includes them, and the server's
    // telemetry filter (shared too) are granted: the wait runs out instead.
    let server = as_identity(&b, "server");
    for (who, filter) in [
        (&dev1, "devices/device-001/commands"),
        (&dev1, "devices/#"),
        (&server, "devices/+/telemetry"),
        (&server, "$share/g/devices/+/telemetry"),
    ] {
        let o = sub_as(&b, who, "5", filter);
        let err = stderr(&o);
        assert!(err.contains("subscribed to"), "{filter}: {err}");
        assert!(!err.contains("refused"), "{filter}: {err}");
    }
    // The server identity may not read commands; an independent client
    // (mosquitto_sub, MQTT 5) is refused the same way.
    let o = run(
        Command::new("mosquitto_sub")
            .args(common::mosquitto_tls_args(&b, Some("server")))
            .args([
                "-V",
                "5",
                "-t",
                "devices/device-001/commands",
                "-C",
                "1",
                "-W",
                "3",
            ]),
        T,
    );
    assert!(
        stderr(&o).contains("All subscription requests were denied"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn commands_get_replies() {
    let b = broker();
    let mut device = Proc::spawn({
        let mut c = b.mqttkit();
        c.args([
            "sub",
            "command",
            "--device-id",
            "device-001",
            "--reply",
            "--json",
        ]);
        c
    });
    device.wait_stderr("subscribed to devices/device-001/commands");
    let o = run(
        b.mqttkit().args([
            "pub",
            "command",
            "--device-id",
            "device-001",
            "--name",
            "reboot",
            "--param",
            "delay=1",
            "--wait-reply",
            "5s",
            "--json",
        ]),
        T,
    );
    let sent: serde_json::Value = serde_json::from_str(stdout(ok(&o)).trim()).unwrap();
    let reply = &sent["reply"];
    assert_eq!(reply["id"], sent["id"], "{sent}");
    assert_eq!(reply["ok"], true, "{sent}");
    assert_eq!(reply["device_id"], "device-001");
    assert_eq!(reply["message"], "received reboot");
    device.wait_for(T, "the command printed", |p| !p.lines().is_empty());
    let got: serde_json::Value = serde_json::from_str(&device.lines()[0]).unwrap();
    assert_eq!(got["id"], sent["id"]);
    device.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, _, err) = device.finish(T);
    assert!(status.success(), "{err}");
    // Nobody answers: exit 1 after the timeout, saying so.
    let start = Instant::now();
    let o = run(
        b.mqttkit().args([
            "pub",
            "command",
            "--device-id",
            "device-001",
            "--name",
            "reboot",
            "--wait-reply",
            "1s",
        ]),
        T,
    );
    assert!(!o.status.success());
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(
        stderr(&o).contains("no reply from device-001 on devices/device-001/replies within 1s"),
        "{}",
        stderr(&o)
    );
}

/// paho-mqtt's MQTT 5 client on the other end, with the server identity.
fn paho(b: &Broker, mode: &str, topic: &str, identity: &str) -> Command {
    let c = b.certs();
    let mut cmd = Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/v5_peer.py"))
        .args(["--port", &b.port.to_string()])
        .arg("--cafile")
        .arg(c.join("ca.crt"))
        .arg("--cert")
        .arg(c.join(format!("{identity}.crt")))
        .arg("--key")
        .arg(c.join(format!("{identity}.key")))
        .args(["--client-id", &format!("{identity}-paho-v5")])
        .args([mode, topic]);
    cmd
}

#[test]
fn properties_round_trip_with_paho() {
    let b = broker();
    let topic = "devices/device-001/telemetry";
    // mqttkit -> paho: user properties (in order, a key twice) and expiry.
    let mut peer = Proc::spawn(paho(&b, "receive", topic, "server"));
    peer.wait_for(T, "ready", |p| {
        p.lines().first().map(String::as_str) == Some("ready")
    });
    let o = run(
        b.mqttkit().args([
            "pub",
            "-t",
            topic,
            "-m",
            "hello",
            "-q",
            "1",
            "--property",
            "k=v",
            "--property",
            "k=w=2",
            "--message-expiry",
            "60s",
        ]),
        T,
    );
    ok(&o);
    let (status, lines, err) = peer.finish(T);
    assert!(status.success(), "{err}");
    let got: serde_json::Value =
        serde_json::from_str(&lines[1]).unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    assert_eq!(got["payload"], "hello");
    assert_eq!(
        got["user_properties"],
        serde_json::json!([["k", "v"], ["k", "w=2"]])
    );
    let expiry = got["message_expiry"].as_u64().unwrap();
    assert!((55..=60).contains(&expiry), "{got}");
    // mqttkit's own telemetry says what it is.
    let mut peer = Proc::spawn(paho(&b, "receive", topic, "server"));
    peer.wait_for(T, "ready", |p| {
        p.lines().first().map(String::as_str) == Some("ready")
    });
    ok(&run(
        b.mqttkit().args(["pub", "telemetry", "--count", "1"]),
        T,
    ));
    let (_, lines, err) = peer.finish(T);
    let got: serde_json::Value =
        serde_json::from_str(&lines[1]).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(
        got["content_type"],
        "application/x-protobuf; proto=mqttkit.v1.Telemetry"
    );
    // paho -> mqttkit: `sub` shows them.
    let mut sub = Proc::spawn({
        let mut c = b.mqttkit();
        c.args([
            "sub", "-t", topic, "-C", "1", "-W", "30", "--format", "json",
        ]);
        c
    });
    sub.wait_stderr("subscribed to");
    let o = run(&mut paho(&b, "publish", topic, "device-001"), T);
    ok(&o);
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    let got: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(got["payload"], "from paho");
    let props = &got["properties"];
    assert_eq!(
        props["user_properties"],
        serde_json::json!([["origin", "paho"], ["origin", "python"]])
    );
    let expiry = props["message_expiry_s"].as_u64().unwrap();
    assert!((115..=120).contains(&expiry), "{got}");
}

/// Rows in the sink's SQLite database, by `sink stats --json`.
fn rows(b: &Broker, url: &str) -> u64 {
    let o = run(b.mqttkit().args(["sink", "stats", url, "--json"]), T);
    if !o.status.success() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap_or_default();
    (v["devices"].as_array().into_iter().flatten())
        .map(|d| d["rows"].as_u64().unwrap_or(0))
        .sum()
}

fn worker(b: &Broker, url: &str, n: u32) -> Proc {
    let mut c = b.mqttkit();
    c.args([
        "sub",
        "telemetry",
        "--sink",
        url,
        "--share",
        "sinks",
        "--worker",
    ])
    .arg(n.to_string());
    let mut p = Proc::spawn(c);
    p.wait_stderr("sink:");
    p
}

/// "sink: stored N messages" from a worker's exit summary.
fn stored(err: &str) -> u64 {
    let line = err
        .lines()
        .rfind(|l| l.starts_with("sink: stored"))
        .unwrap_or("");
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sink_workers_share_one_stream_into_sqlite() {
    let b = broker();
    let url = format!("sqlite:{}", b.path().join("t.db").display());
    share_flow(&b, &url);
}

#[test]
fn sink_workers_share_one_stream_into_postgres() {
    let pg = sink_support::Postgres::start();
    pg.psql("postgres", "CREATE DATABASE telemetry");
    let b = broker();
    let url = pg.url("telemetry");
    share_flow(&b, &url);
    // Counted by the database itself, apart from `sink stats`.
    let n = pg.psql(
        "telemetry",
        "SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry",
    );
    assert_eq!(n, "6000|6000");
}

/// 3 workers in one `--share` group, 2 publishers of 3,000 QoS 1 messages
/// each; worker 2 SIGKILLed part way and restarted: 6,000 rows, each once,
/// and every worker stored some (by its own exit summary).
fn share_flow(b: &Broker, url: &str) {
    let url = url.to_string();
    let mut workers: Vec<Proc> = (1..=3).map(|n| worker(b, &url, n)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let publishers: Vec<Proc> = ["device-001", "device-002"]
        .iter()
        .map(|d| {
            let mut c = b.mqttkit();
            c.args([
                "pub",
                "telemetry",
                "--device-id",
                d,
                "--count",
                "3000",
                "--qos",
                "1",
                "--rate",
                "1500",
            ]);
            Proc::spawn(c)
        })
        .collect();
    // Part way, worker 2 dies without a word, and comes back.
    let deadline = Instant::now() + T;
    while rows(b, &url) < 1500 {
        assert!(Instant::now() < deadline, "rows stuck at {}", rows(b, &url));
        std::thread::sleep(Duration::from_millis(50));
    }
    workers[1].signal(nix::sys::signal::Signal::SIGKILL);
    let _ = workers.remove(1).finish(T);
    std::thread::sleep(Duration::from_millis(500));
    workers.insert(1, worker(b, &url, 2));
    for p in publishers {
        let (status, _, err) = p.finish(T);
        assert!(status.success(), "{err}");
    }
    let deadline = Instant::now() + T;
    while rows(b, &url) < 6000 {
        assert!(Instant::now() < deadline, "{} of 6000 rows", rows(b, &url));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut total = 0;
    for w in workers {
        w.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, _, err) = w.finish(T);
        assert!(status.success(), "{err}");
        assert!(stored(&err) > 0, "a worker stored nothing:\n{err}");
        total += stored(&err);
    }
    // Each row once: the store's key is (device, seq), and there are 6,000.
    assert_eq!(rows(b, &url), 6000);
    assert!(total <= 6000, "{total}");
    let o = run(b.mqttkit().args(["sink", "stats", &url, "--json"]), T);
    let v: serde_json::Value = serde_json::from_str(&stdout(ok(&o))).unwrap();
    for d in v["devices"].as_array().unwrap() {
        assert_eq!(d["rows"], 3000, "{v}");
        assert_eq!(d["gaps"], serde_json::json!([]), "{v}");
    }
}

/// A "broker" in front of mosquitto that refuses MQTT 5 as a 3.1.1-only
/// broker does (CONNACK return code 1, then close) and relays 3.1.1.
fn old_broker_relay(upstream: u16) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || relay(conn, upstream));
        }
    });
    port
}

fn relay(mut client: TcpStream, upstream: u16) {
    // Fixed header, remaining length (< 128 for our CONNECTs), then
    // "\0\x04MQTT" and the protocol level.
    let mut head = [0u8; 9];
    if client.read_exact(&mut head).is_err() {
        return;
    }
    if head[8] == 5 {
        // Read the whole CONNECT first: closing with unread bytes resets
        // the connection, and the client might never see the CONNACK.
        let mut rest = vec![0u8; (2 + head[1] as usize).saturating_sub(head.len())];
        let _ = client.read_exact(&mut rest);
        let _ = client.write_all(&[0x20, 0x02, 0x00, 0x01]);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = client.read(&mut [0u8; 64]);
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = server.write_all(&head);
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut client, &mut server);
    let _ = server.shutdown(std::net::Shutdown::Both);
}

#[test]
fn falls_back_to_3_1_1_when_the_broker_refuses_5() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("m.conf");
    let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
    if nix::unistd::Uid::effective().is_root() {
        text.push_str("user root\n");
    }
    std::fs::write(&conf, text).unwrap();
    let mut mosquitto = KillOnDrop(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Ready when it logs its listener.
    let mut log = BufReader::new(mosquitto.0.stderr.take().unwrap());
    let mut line = String::new();
    while log.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("listen socket") {}
    let relay = old_broker_relay(port);
    let host = format!("mqtt://127.0.0.1:{relay}");
    let o = run(
        Command::new(bin()).args(["pub", "-h", &host, "-t", "a/b", "-m", "hi", "-q", "1"]),
        T,
    );
    let err = stderr(ok(&o));
    assert!(
        err.contains("the broker refused MQTT 5 (") && err.contains("); using MQTT 3.1.1"),
        "{err}"
    );
    assert!(err.contains("acked 1"), "{err}");
    // Asked for 5 explicitly: no fallback, one line.
    let o = run(
        Command::new(bin()).args(["pub", "-V", "5", "-h", &host, "-t", "a/b", "-m", "hi"]),
        T,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("pass -V 311"), "{err}");
}

/// Stops the mosquitto this test started, also when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
