//! `broker` against a real mosquitto (Debian package) on free loopback ports.

mod common;
mod sink_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{mosquitto_tls_args, ok, run, stderr, stdout, Broker, BrokerOptions, Proc};
use sink_support::{rows, SinkProc};

const T: Duration = Duration::from_secs(60);

#[test]
fn up_status_down_lifecycle() {
    let broker = Broker::start();
    let out = broker.out();
    let conf = std::fs::read_to_string(out.join("mosquitto/mosquitto.conf")).unwrap();
    assert!(conf.contains("require_certificate true"));
    // The binding plugin maps the CN to the user name (mosquitto would skip it otherwise).
    assert!(conf.contains("use_identity_as_username false"));
    assert!(conf.contains("\nplugin ./mqttkit_bind.so\n"));
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
            // The binding lets user alice use only client ids alice and alice-*.
            "-I",
            "alice-",
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
    // The right password, but bob's client id: the binding refuses it.
    let theirs = run(
        Command::new("mosquitto_pub").args(&base).args([
            "-i",
            "bob-1",
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
    assert!(!theirs.status.success(), "alice connected as bob-1");
    assert!(
        broker
            .log()
            .contains("mqttkit_bind: refused client id 'bob-1' for identity 'alice'"),
        "{}",
        broker.log()
    );
    let wrong = run(
        Command::new("mosquitto_pub").args(&base).args([
            // The binding lets user alice use only client ids alice and alice-*.
            "-I",
            "alice-",
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
            // The binding lets user bob use only client ids bob and bob-*.
            "-I",
            "bob-",
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

/// `mqttkit ARGS` in the broker's dir, to completion.
fn mqttkit(broker: &Broker, args: &[&str]) -> std::process::Output {
    run(broker.mqttkit().args(args), T)
}

/// A refused CONNECT: non-zero exit and one error line naming the refusal
/// (besides a warning or `pub`'s summary of what it sent: nothing).
#[track_caller]
fn assert_not_authorized(o: &std::process::Output, what: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "{what} was accepted: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{what}: {err}");
    assert!(
        errors[0].contains("the broker refused the MQTT CONNECT: not authorized"),
        "{what}: {err}"
    );
}

/// `sub command --persistent` for `device` until it has subscribed, then
/// away: its session (and subscription) stays on the broker.
fn leave_a_command_session(broker: &Broker, device: &str) {
    let mut c = broker.mqttkit();
    c.args(["sub", "command", "--device-id", device, "--persistent"]);
    let mut p = Proc::spawn(c);
    p.wait_stderr("subscribed to");
    p.signal(nix::sys::signal::Signal::SIGINT);
    let (status, _, err) = p.finish(T);
    assert!(status.success(), "{err}");
}

/// The sink's client id, from its banner.
fn sink_client_id(sink: &SinkProc) -> String {
    let err = sink.stderr();
    let at = err
        .find("(client id ")
        .expect("the sink names its client id")
        + 11;
    err[at..].split(';').next().unwrap().to_string()
}

/// Issue 13: with device-001's certificate, the client ids of device-002's
/// `sub command` session, of the sink's session and of device-002 itself are
/// refused before mosquitto touches those sessions; everything queued for
/// them arrives afterwards, and a running publisher is never kicked.
#[test]
fn an_identity_cannot_take_over_another_identitys_sessions() {
    let broker = Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into()],
        ..Default::default()
    });
    let conf = std::fs::read_to_string(broker.out().join("mosquitto/mosquitto.conf")).unwrap();
    assert!(conf.contains("\nplugin ./mqttkit_bind.so\n"), "{conf}");
    // Sessions that must survive: device-002's commands and the sink's backlog.
    leave_a_command_session(&broker, "device-002");
    let url = format!("sqlite:{}", broker.path().join("t.db").display());
    let mut sink = SinkProc::start(&broker, &url, &[], &[]);
    sink.wait_subscribed();
    sink.terminate();
    let sink_id = sink_client_id(&sink);
    // The server identity queues 10 commands and device-001 100 readings.
    for i in 0..10 {
        let param = format!("i={i}");
        let args = [
            "pub",
            "command",
            "--device-id",
            "device-002",
            "--name",
            "set",
            "--param",
            &param,
        ];
        ok(&mqttkit(&broker, &args));
    }
    ok(&mqttkit(
        &broker,
        &[
            "pub",
            "telemetry",
            "--device-id",
            "device-001",
            "--count",
            "100",
        ],
    ));

    // A running publisher as device-002, attacked while it runs.
    let mut publisher = broker.mqttkit();
    publisher.args([
        "pub",
        "telemetry",
        "--device-id",
        "device-002",
        "--rate",
        "100",
        "--count",
        "300",
    ]);
    let publisher = Proc::spawn(publisher);
    std::thread::sleep(Duration::from_millis(300));

    // device-001's certificate (the profile's device identity) with their ids,
    // clean sessions (which would destroy what is queued).
    // (-W: a subscriber let in would wait for one message; it must not be let in.)
    let theirs = [
        (["pub", "telemetry", "--rate"], "device-002"),
        (["sub", "command", "-W"], "device-002-sub-commands"),
        (["sub", "telemetry", "-W"], sink_id.as_str()),
    ];
    let certs = broker.certs();
    let (cert, key) = (certs.join("device-001.crt"), certs.join("device-001.key"));
    for (args, id) in theirs {
        let mut c = broker.mqttkit();
        c.args(args)
            .args(["2", "--client-id", id, "--count", "1"])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key);
        assert_not_authorized(&run(&mut c, T), &format!("device-001 as {id}"));
        assert!(
            broker.log().contains(&format!(
                "mqttkit_bind: refused client id '{id}' for identity 'device-001'"
            )),
            "{}",
            broker.log()
        );
    }
    // Its own namespace is its own.
    ok(&mqttkit(
        &broker,
        &[
            "pub",
            "telemetry",
            "--device-id",
            "device-001",
            "--client-id",
            "device-001-tool",
            "--count",
            "1",
        ],
    ));

    let (status, _, err) = publisher.finish(T);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("acked 300") && err.contains(" 0 reconnects"),
        "the publisher was disturbed: {err}"
    );

    // device-002 resumes its session: all 10 commands, in order.
    let mut c = broker.mqttkit();
    c.args([
        "sub",
        "command",
        "--device-id",
        "device-002",
        "--persistent",
        "--json",
        "--count",
        "10",
    ]);
    let (status, lines, err) = Proc::spawn(c).finish(T);
    assert!(status.success(), "{err}");
    let got: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["params"]["i"].to_string())
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("\"{i}\"")).collect();
    assert_eq!(got, want, "{lines:?}");

    // The sink resumes its session: device-001's 100 readings and device-002's
    // 300 (device-001-tool's seq 0 is device-001's seq 0 again: stored once).
    let mut sink = SinkProc::start(&broker, &url, &[], &[]);
    sink.wait_subscribed();
    assert!(
        sink.stderr().contains("resumed the session"),
        "{}",
        sink.stderr()
    );
    let deadline = std::time::Instant::now() + T;
    while rows(&broker, &url, &[]) < 400 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    sink.terminate();
    let stats = sink_support::stats(&broker, &url, &[]);
    assert_eq!(stats["rows"], 400, "{stats}");
    assert!(
        sink.stderr().contains("(1 already there)"),
        "{}",
        sink.stderr()
    );
}

/// `--allow-any-client-id` renders mosquitto's own CN mapping and no plugin.
#[test]
fn allow_any_client_id_runs_without_the_plugin() {
    let broker = Broker::start_with(BrokerOptions {
        up_args: vec!["--allow-any-client-id".into()],
        ..Default::default()
    });
    let conf = std::fs::read_to_string(broker.out().join("mosquitto/mosquitto.conf")).unwrap();
    assert!(conf.contains("use_identity_as_username true"), "{conf}");
    assert!(!conf.contains("\nplugin "), "{conf}");
    assert!(!broker.out().join("mosquitto/mqttkit_bind.so").exists());
    // Any id goes, as before (the ACL still holds).
    ok(&mqttkit(
        &broker,
        &[
            "pub",
            "telemetry",
            "--device-id",
            "device-001",
            "--client-id",
            "anything",
            "--count",
            "1",
        ],
    ));
}

/// A plugin the real mosquitto cannot load (planted: a shim first on PATH
/// truncates it just before exec'ing /usr/sbin/mosquitto, as a wrong
/// architecture or a mosquitto 1.x would fail) fails `broker up` in one line
/// and leaves nothing running.
#[test]
fn a_plugin_mosquitto_cannot_load_fails_up_in_one_line() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let real = common::mosquitto_path();
    let shim_dir = broker.path().join("shim");
    std::fs::create_dir(&shim_dir).unwrap();
    let shim = shim_dir.join("mosquitto");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nprintf 'not an ELF' > mqttkit_bind.so\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        shim_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = broker.mqttkit();
    c.env("PATH", path)
        .args(["broker", "up", "--out", "out"])
        .args(&broker.up_args);
    let o = run(&mut c, T);
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: mosquitto could not load the client-id binding plugin mqttkit_bind.so: Error: Unable to load auth plugin")
            && err.contains("--allow-any-client-id"),
        "{err}"
    );
    assert!(!broker.out().join("mosquitto/state.json").exists());
    std::net::TcpListener::bind(("127.0.0.1", broker.port)).expect("nothing left on the port");
}
