//! `broker` against a real mosquitto (Debian package) on free loopback ports.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{mosquitto_tls_args, ok, run, stderr, stdout, Broker, BrokerOptions};

const T: Duration = Duration::from_secs(60);

#[test]
fn up_status_down_lifecycle() {
    let broker = Broker::start();
    let out = broker.out();
    let conf = std::fs::read_to_string(out.join("mosquitto/mosquitto.conf")).unwrap();
    assert!(conf.contains("require_certificate true"));
    assert!(conf.contains("use_identity_as_username true"));
    assert!(conf.contains("allow_anonymous false"));
    assert!(conf.contains("persistence true"));
    assert!(conf.contains(&format!("listener {} 127.0.0.1", broker.port)));

    // Running again is a no-op that says so.
    let again = broker.up();
    assert!(
        stderr(&again).contains("already running"),
        "{}",
        stderr(&again)
    );

    let status = ok(&run(
        broker.mqttkit().args(["broker", "status", "--json"]),
        T,
    ))
    .clone();
    let s: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(s["healthy"], true);
    assert_eq!(s["port"], broker.port);

    // The local profile points at this broker.
    let profile = std::fs::read_to_string(out.join("profiles/local.toml")).unwrap();
    assert!(
        profile.contains(&format!("port = {}", broker.port)),
        "{profile}"
    );

    // A port taken by something else is a clear error.
    let other = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let mut c = other.mqttkit();
    c.args([
        "broker",
        "up",
        "--runtime",
        "native",
        "--bind",
        "127.0.0.1",
        "--port",
        &broker.port.to_string(),
    ]);
    let o = run(&mut c, T);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("port {} is already in use", broker.port)),
        "{}",
        stderr(&o)
    );

    let pid = broker.pid();
    ok(&run(broker.mqttkit().args(["broker", "down"]), T));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .is_empty()
    );
    // The port is free again.
    std::net::TcpListener::bind(("127.0.0.1", broker.port)).expect("port freed by down");
    let o = run(broker.mqttkit().args(["broker", "status"]), T);
    assert!(!o.status.success());
    assert!(stdout(&o).starts_with("down"), "{}", stdout(&o));
    // Down again: nothing to do, exit 0.
    ok(&run(broker.mqttkit().args(["broker", "down"]), T));
}

#[test]
fn logs_show_connections() {
    let broker = Broker::start();
    let o = ok(&run(
        broker.mqttkit().args(["broker", "logs", "-n", "50"]),
        T,
    ))
    .clone();
    assert!(stdout(&o).contains("mosquitto version"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("u'server'"),
        "health check connection not logged: {}",
        stdout(&o)
    );
}

#[test]
fn missing_certificates_name_pki_init() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        Command::new(common::bin()).current_dir(dir.path()).args([
            "broker",
            "up",
            "--runtime",
            "native",
        ]),
        T,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("mqttkit pki init"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dir.path().join("out/mosquitto").exists());
}

#[test]
fn acls_confine_devices_to_their_own_topics() {
    let broker = Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into()],
        ..Default::default()
    });
    common::assert_acls_confine_devices(&broker);
}

#[test]
fn compose_file_points_at_the_rendered_files() {
    let broker = Broker::start_with(BrokerOptions {
        websockets: true,
        ..Default::default()
    });
    let text = std::fs::read_to_string(broker.path().join("compose.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let svc = &doc["services"]["mosquitto"];
    assert_eq!(svc["image"].as_str(), Some("eclipse-mosquitto:2"));
    let ports: Vec<String> = svc["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        ports.contains(&format!("127.0.0.1:{0}:{0}", broker.port)),
        "{ports:?}"
    );
    assert!(
        ports.contains(&format!("127.0.0.1:{0}:{0}", broker.ws_port.unwrap())),
        "{ports:?}"
    );
    let volumes = svc["volumes"].as_sequence().unwrap();
    let mut targets = Vec::new();
    for v in volumes {
        let v = v.as_str().unwrap();
        let host = v.split(':').next().unwrap();
        let resolved = broker.path().join(host);
        assert!(resolved.exists(), "volume source {host} does not exist");
        targets.push(v.split(':').nth(1).unwrap().to_string());
        if v.contains("/mosquitto/config") {
            assert!(resolved.join("mosquitto.conf").exists());
            assert!(resolved.join("acl").exists());
        }
    }
    assert!(targets.contains(&"/mosquitto/config".to_string()));
    assert!(targets.contains(&"/mosquitto/certs".to_string()));
    // The config's relative certificate paths resolve from the container's working_dir.
    assert_eq!(svc["working_dir"].as_str(), Some("/mosquitto/config"));
    let conf = std::fs::read_to_string(broker.out().join("mosquitto/mosquitto.conf")).unwrap();
    assert!(conf.contains("cafile ../certs/ca.crt"));
    assert!(conf.contains("protocol websockets"));
}

#[test]
fn password_file_in_mosquitto_format() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        up_args: vec!["--auth".into(), "password".into()],
        ..Default::default()
    });
    // Without users, --auth password is refused up front.
    let mut c = broker.mqttkit();
    c.args(["broker", "up", "--out", "out"])
        .args(&broker.up_args);
    let o = run(&mut c, T);
    assert!(
        stderr(&o).contains("mqttkit broker user add"),
        "{}",
        stderr(&o)
    );

    for (user, pass) in [("alice", "s3cret pass"), ("bob", "other")] {
        let mut child = broker
            .mqttkit()
            .args(["broker", "user", "add", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{pass}").unwrap();
        let o = common::wait_output(child, T, "user add");
        ok(&o);
        assert!(
            !stdout(&o).contains(pass) && !stderr(&o).contains(pass),
            "password echoed"
        );
    }
    let passwd = std::fs::read_to_string(broker.out().join("mosquitto/passwd")).unwrap();
    assert!(passwd.lines().all(|l| l.contains(":$7$101$")), "{passwd}");
    // mosquitto drops an entry whose name holds ':', so it is refused.
    let o = run(
        broker
            .mqttkit()
            .args(["broker", "user", "add", "e:ve", "--password-stdin"]),
        T,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("NAME 'e:ve': contains ':'"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    let after = std::fs::read_to_string(broker.out().join("mosquitto/passwd")).unwrap();
    assert_eq!(passwd, after, "the password file changed");
    let up = broker.up();
    assert!(
        stdout(&up)
            .contains("with TLS and passwords (password auth; no client certificate required)"),
        "{}",
        stdout(&up)
    );
    let base = mosquitto_tls_args(&broker, None);
    let right = run(
        Command::new("mosquitto_pub").args(&base).args([
            "-u",
            "alice",
            "-P",
            "s3cret pass",
            "-t",
            "devices/alice/telemetry",
            "-m",
            "x",
        ]),
        T,
    );
    ok(&right);
    let wrong = run(
        Command::new("mosquitto_pub").args(&base).args([
            "-u",
            "alice",
            "-P",
            "nope",
            "-t",
            "devices/alice/telemetry",
            "-m",
            "x",
        ]),
        T,
    );
    assert!(!wrong.status.success(), "wrong password accepted");
    // Removing a user takes effect on the running broker (SIGHUP reload).
    ok(&run(
        broker.mqttkit().args(["broker", "user", "remove", "bob"]),
        T,
    ));
    std::thread::sleep(Duration::from_millis(500));
    let removed = run(
        Command::new("mosquitto_pub").args(&base).args([
            "-u",
            "bob",
            "-P",
            "other",
            "-t",
            "devices/bob/telemetry",
            "-m",
            "x",
        ]),
        T,
    );
    assert!(!removed.status.success(), "removed user still accepted");
}

#[test]
fn a_compose_file_mqttkit_did_not_write_is_never_replaced() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let mine = "services:\n  app:\n    image: my/app\n";
    std::fs::write(broker.path().join("compose.yaml"), mine).unwrap();
    // The native runtime does not use a compose file: it starts, leaving it alone
    // (docker refuses it: the unit test a_foreign_compose_file_matters_only_to_docker).
    let o = broker.up();
    let _ = run(broker.mqttkit().args(["broker", "down", "--out", "out"]), T);
    assert!(!stdout(&o).contains("compose "), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_to_string(broker.path().join("compose.yaml")).unwrap(),
        mine
    );
}
