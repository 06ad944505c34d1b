//! `broker up --runtime docker` against a real Docker engine running a
//! container of Debian's mosquitto (tests/docker_support: our own dockerd
//! when none answers, an image built without a registry). One test runs
//! every scenario on one engine and one image, for each compose tool
//! installed (v1 `docker-compose`, v2 `docker compose`); it skips, saying
//! why, only where dockerd cannot start at all.

mod common;
mod docker_support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ok, run, stderr, stdout, Broker, BrokerOptions, Proc};
use docker_support::{Engine, CONTAINER, IMAGE};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// A broker directory whose `broker up` runs the container with one compose tool.
struct Docker<'a> {
    engine: &'a Engine,
    broker: Broker,
    /// "v1" or "v2" (MQTTKIT_COMPOSE).
    compose: &'static str,
}

impl Docker<'_> {
    fn new<'a>(engine: &'a Engine, compose: &'static str) -> Docker<'a> {
        let broker = Broker::start_with(BrokerOptions {
            clients: vec!["device-002".into()],
            no_broker: true,
            ..Default::default()
        });
        Docker {
            engine,
            broker,
            compose,
        }
    }

    fn mqttkit(&self) -> Command {
        let mut c = self.broker.mqttkit();
        self.engine.env(&mut c).env("MQTTKIT_COMPOSE", self.compose);
        c
    }

    fn mqttkit_run(&self, args: &[&str]) -> Output {
        run(self.mqttkit().args(args), T)
    }

    fn up(&self, extra: &[&str]) -> Output {
        let port = self.broker.port.to_string();
        let mut args = vec![
            "broker",
            "up",
            "--runtime",
            "docker",
            "--image",
            IMAGE,
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
        ];
        args.extend(extra);
        let o = self.mqttkit_run(&args);
        ok(&o).clone()
    }

    fn port_is_free(&self) -> bool {
        std::net::TcpListener::bind(("127.0.0.1", self.broker.port)).is_ok()
    }

    fn inspect(&self, format: &str) -> Option<String> {
        let o = run(
            self.engine
                .docker()
                .args(["inspect", "-f", format, CONTAINER]),
            T,
        );
        o.status.success().then(|| stdout(&o).trim().to_string())
    }
}

impl Drop for Docker<'_> {
    fn drop(&mut self) {
        let _ = run(self.mqttkit().args(["broker", "down"]), T);
    }
}

/// The compose tools installed here.
fn compose_versions() -> Vec<&'static str> {
    let answers = |c: &mut Command| {
        c.arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut v = Vec::new();
    if answers(&mut Command::new("docker-compose")) {
        v.push("v1");
    }
    if answers(Command::new("docker").arg("compose")) {
        v.push("v2");
    }
    v
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    let parse = |l: &String| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    lines.iter().map(parse).collect()
}

/// `sub telemetry --json ARGS`, once subscribed.
fn start_sub(d: &Docker<'_>, args: &[&str]) -> Proc {
    let mut c = d.mqttkit();
    c.args(["sub", "telemetry", "--json"]).args(args);
    let mut sub = Proc::spawn(c);
    sub.wait_stderr("subscribed to");
    sub
}

fn seqs_of(p: Proc) -> Vec<u64> {
    let (status, lines, err) = p.finish(T);
    assert!(status.success(), "sub failed: {err}");
    json_lines(&lines)
        .iter()
        .map(|v| v["seq"].as_u64().expect("seq"))
        .collect()
}

fn pub_telemetry(d: &Docker<'_>, count: u64) {
    let o = d.mqttkit_run(&["pub", "telemetry", "--count", &count.to_string()]);
    ok(&o);
}

#[test]
fn docker_runtime_end_to_end() {
    let started = Instant::now();
    let Some(engine) = Engine::start() else {
        return;
    };
    let versions = compose_versions();
    if versions.is_empty() {
        eprintln!("SKIPPED (docker tests): neither docker-compose (v1) nor `docker compose` (v2) is installed");
        return;
    }
    for &v in &versions {
        let t = Instant::now();
        lifecycle(&engine, v);
        eprintln!("compose {v}: lifecycle in {:.1?}", t.elapsed());
    }
    let t = Instant::now();
    passwords(&engine, versions[0]);
    eprintln!("password users in {:.1?}", t.elapsed());
    let t = Instant::now();
    quickstart(&engine, versions[0]);
    eprintln!("quickstart in {:.1?}", t.elapsed());
    a_missing_compose_tool_is_named(&engine);
    eprintln!("docker tests ({versions:?}) in {:.1?}", started.elapsed());
}

/// up, the container as rendered, status, mTLS pub/sub, ACLs, logs,
/// persistence across down/up, down.
fn lifecycle(engine: &Engine, compose: &'static str) {
    let d = Docker::new(engine, compose);
    let up = d.up(&[]);
    let tool = if compose == "v1" {
        "docker-compose"
    } else {
        "docker compose"
    };
    assert!(
        stdout(&up).contains(&format!(
            "(docker runtime via {tool}, container {CONTAINER})"
        )),
        "{}",
        stdout(&up)
    );
    let text = std::fs::read_to_string(d.broker.path().join("compose.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let svc = &doc["services"]["mosquitto"];
    assert_eq!(svc["image"].as_str(), Some(IMAGE));
    let port = d.broker.port;
    assert_eq!(
        svc["ports"][0].as_str(),
        Some(format!("127.0.0.1:{port}:{port}").as_str())
    );
    // What docker runs: the image, as uid 1883, published on loopback only.
    let user = if nix::unistd::geteuid().is_root() {
        "1883:1883".to_string()
    } else {
        format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
    };
    assert_eq!(
        d.inspect("{{.Config.Image}} {{.Config.User}}"),
        Some(format!("{IMAGE} {user}"))
    );
    let bindings = d
        .inspect(&format!(
            "{{{{json (index .HostConfig.PortBindings \"{port}/tcp\")}}}}"
        ))
        .unwrap();
    assert!(bindings.contains(r#""HostIp":"127.0.0.1""#), "{bindings}");

    let again = d.up(&[]);
    assert!(
        stderr(&again).contains(&format!(
            "broker already running (container {CONTAINER}, port {port})"
        )),
        "{}",
        stderr(&again)
    );
    let status = ok(&d.mqttkit_run(&["broker", "status", "--json"])).clone();
    let s: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(
        (s["healthy"].clone(), s["runtime"].clone()),
        (Value::Bool(true), "docker".into()),
        "{s}"
    );
    let human = d.mqttkit_run(&["broker", "status"]);
    assert!(
        stdout(&human).starts_with(&format!(
            "running and healthy: container {CONTAINER}, port {port}"
        )),
        "{}",
        stdout(&human)
    );

    // mTLS round trip through the container: telemetry up, a command down.
    let server = start_sub(&d, &["--count", "5"]);
    pub_telemetry(&d, 5);
    assert_eq!(seqs_of(server), (0..5).collect::<Vec<u64>>());
    let mut device = d.mqttkit();
    device.args(["sub", "command", "--json", "--count", "1"]);
    let mut device = Proc::spawn(device);
    device.wait_stderr("subscribed to");
    ok(&d.mqttkit_run(&[
        "pub",
        "command",
        "--device-id",
        "device-001",
        "--name",
        "reboot",
    ]));
    let (st, lines, err) = device.finish(T);
    assert!(st.success(), "{err}");
    assert_eq!(json_lines(&lines)[0]["name"], "reboot", "{lines:?}");

    common::assert_acls_confine_devices(&d.broker);
    client_ids_are_bound(&d);

    // The container's log, through `broker logs`.
    let logs = ok(&d.mqttkit_run(&["broker", "logs", "-n", "200"])).clone();
    let log = stdout(&logs);
    assert!(log.contains("mosquitto version 2."), "{log}");
    assert!(
        log.contains("u'device-002'"),
        "ACL clients not in the log: {log}"
    );
    assert!(log.contains("Opening ipv4 listen socket on port"), "{log}");

    follow_logs(&d);
    persistence(&d);

    ok(&d.mqttkit_run(&["broker", "down"]));
    assert_eq!(
        d.inspect("{{.State.Running}}"),
        None,
        "container left behind"
    );
    assert!(d.port_is_free(), "port {port} still taken after down");
    let o = d.mqttkit_run(&["broker", "status"]);
    assert!(!o.status.success());
    assert!(stdout(&o).starts_with("down"), "{}", stdout(&o));
}

/// The container loads the client-id binding plugin: device-001's
/// certificate cannot use device-002's `sub command` session, which still
/// gets every command queued for it.
fn client_ids_are_bound(d: &Docker<'_>) {
    let mut c = d.mqttkit();
    c.args([
        "sub",
        "command",
        "--device-id",
        "device-002",
        "--persistent",
    ]);
    let mut away = Proc::spawn(c);
    away.wait_stderr("subscribed to");
    away.signal(nix::sys::signal::Signal::SIGINT);
    let (st, _, err) = away.finish(T);
    assert!(st.success(), "{err}");
    for i in 0..5 {
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
        ok(&d.mqttkit_run(&args));
    }
    // A clean session under device-002's id would destroy the queue.
    let o = d.mqttkit_run(&[
        "sub",
        "command",
        "--device-id",
        "device-001",
        "--client-id",
        "device-002-sub-commands",
        "--count",
        "1",
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "device-001 took device-002's session: {err}"
    );
    assert!(
        err.contains("refused the MQTT CONNECT: not authorized"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let mut c = d.mqttkit();
    c.args([
        "sub",
        "command",
        "--device-id",
        "device-002",
        "--persistent",
        "--json",
        "--count",
        "5",
    ]);
    let (st, lines, err) = Proc::spawn(c).finish(T);
    assert!(st.success(), "{err}");
    let got: Vec<String> = json_lines(&lines)
        .iter()
        .map(|v| v["params"]["i"].to_string())
        .collect();
    assert_eq!(
        got,
        ["\"0\"", "\"1\"", "\"2\"", "\"3\"", "\"4\""],
        "{lines:?}"
    );
    let log = stdout(&d.mqttkit_run(&["broker", "logs"]));
    assert!(log.contains("Loading plugin: ./mqttkit_bind.so"), "{log}");
    assert!(
        log.contains(
            "mqttkit_bind: refused client id 'device-002-sub-commands' for identity 'device-001'"
        ),
        "{log}"
    );
}

/// `broker logs -f --json` prints the container's new lines as they come, until SIGINT.
fn follow_logs(d: &Docker<'_>) {
    let mut c = d.mqttkit();
    c.args(["broker", "logs", "-f", "--json", "-n", "1"]);
    let mut follow = Proc::spawn(c);
    follow.wait_for(T, "the last line", |p| !p.lines().is_empty());
    pub_telemetry(d, 1);
    follow.wait_for(T, "device-001's connection", |p| {
        p.lines().iter().any(|l| l.contains("as device-001"))
    });
    follow.signal(nix::sys::signal::Signal::SIGINT);
    let (status, lines, err) = follow.finish(T);
    assert!(status.success(), "{err}");
    for v in json_lines(&lines) {
        assert!(v["time"].is_string() && v["line"].is_string(), "{v}");
    }
}

/// A persistent subscriber's queued QoS 1 messages survive `broker down` + `up`.
fn persistence(d: &Docker<'_>) {
    let first = start_sub(d, &["--persistent", "--client-id", "ops-1"]);
    first.signal(nix::sys::signal::Signal::SIGINT);
    let (status, _, err) = first.finish(T);
    assert!(status.success(), "{err}");
    pub_telemetry(d, 10);

    ok(&d.mqttkit_run(&["broker", "down"]));
    assert_eq!(
        d.inspect("{{.State.Running}}"),
        None,
        "container left behind"
    );
    assert!(d.port_is_free(), "port still taken after down");
    let db = d.broker.out().join("mosquitto/data/mosquitto.db");
    assert!(db.exists(), "no {} after down", db.display());
    // Again, with --json: stdout holds only the report (compose talks on stderr).
    let up = d.up(&["--json"]);
    let v: Value = serde_json::from_str(stdout(&up).trim()).expect("one JSON object");
    assert_eq!(
        (v["runtime"].as_str(), v["container"].as_str()),
        (Some("docker"), Some(CONTAINER)),
        "{v}"
    );

    let mut c = d.mqttkit();
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
    assert_eq!(seqs_of(Proc::spawn(c)), (0..10).collect::<Vec<u64>>());
}

/// `user add` for a running container: the file goes to uid 1883 and the
/// container's mosquitto reloads it (SIGHUP through docker).
fn passwords(engine: &Engine, compose: &'static str) {
    let d = Docker::new(engine, compose);
    let add = |user: &str, pass: &str| {
        let mut c = d.mqttkit();
        c.args(["broker", "user", "add", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{pass}").unwrap();
        stderr(ok(&common::wait_output(child, T, "user add")))
    };
    add("alice", "first pass");
    d.up(&["--auth", "password"]);
    let connects = |user: &str, pass: &str| {
        let mut c = Command::new("mosquitto_pub");
        c.args(common::mosquitto_tls_args(&d.broker, None)).args([
            // The binding lets USER use only client ids USER and USER-*.
            "-I",
            &format!("{user}-"),
            "-u",
            user,
            "-P",
            pass,
            "-t",
            &format!("devices/{user}/telemetry"),
            "-m",
            "x",
        ]);
        run(&mut c, T).status.success()
    };
    assert!(connects("alice", "first pass"));
    assert!(!connects("alice", "wrong"), "a wrong password was accepted");
    let note = add("bob", "second pass");
    assert!(note.contains("the running broker reloaded it"), "{note}");
    let passwd = d.broker.out().join("mosquitto/passwd");
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&passwd).unwrap().uid(), 1883);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        connects("bob", "second pass"),
        "the container did not reload the new user"
    );
}

fn quickstart(engine: &Engine, compose: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let mqttkit = || {
        let mut c = Command::new(common::bin());
        c.current_dir(dir.path())
            .env_remove("MQTTKIT_OUT")
            .env_remove("MQTTKIT_PROFILE")
            .env("MQTTKIT_COMPOSE", compose);
        engine.env(&mut c);
        c
    };
    let o = run(
        mqttkit().args([
            "quickstart",
            "--runtime",
            "docker",
            "--image",
            IMAGE,
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
        ]),
        Duration::from_secs(90),
    );
    let _ = run(mqttkit().args(["broker", "down"]), T);
    let text = stdout(ok(&o));
    for seq in 0..5 {
        assert!(
            text.contains(&format!(
                "server  <- devices/device-001/telemetry  device-001 seq={seq} "
            )),
            "telemetry {seq} missing: {text}"
        );
    }
    assert!(
        text.contains("device-001 <- devices/device-001/commands  set_interval"),
        "{text}"
    );
    assert!(text.contains("docker runtime"), "{text}");
}

/// With the engine answering but the forced compose tool absent: one line naming it.
fn a_missing_compose_tool_is_named(engine: &Engine) {
    let d = Docker::new(engine, "v1");
    let bin = tempfile::tempdir().unwrap();
    let docker = docker_support::which("docker").unwrap();
    std::os::unix::fs::symlink(docker, bin.path().join("docker")).unwrap();
    let port = d.broker.port.to_string();
    let o = run(
        d.mqttkit().env("PATH", bin.path()).args([
            "broker",
            "up",
            "--runtime",
            "docker",
            "--image",
            IMAGE,
            "--port",
            &port,
        ]),
        T,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("the Docker engine answers but `docker-compose` (v1, forced by MQTTKIT_COMPOSE=v1) is not installed"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!d.broker.path().join("compose.yaml").exists());
}

/// Environment, extra `broker up` arguments, the error wanted.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);

/// No engine, no docker CLI, a bad --image: one line each, nothing written.
#[test]
fn docker_runtime_errors_name_what_is_missing() {
    let b = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let empty = tempfile::tempdir().unwrap();
    let nowhere = format!("unix://{}", empty.path().join("none.sock").display());
    let cases: [Case; 3] = [
        (
            &[("DOCKER_HOST", nowhere.as_str())],
            &[],
            "--runtime docker: the Docker engine does not answer (`docker info`: ",
        ),
        (
            &[("PATH", empty.path().to_str().unwrap())],
            &[],
            "--runtime docker: no `docker` command found; install Docker",
        ),
        (
            &[],
            &["--image", "mosquitto latest"],
            "--image 'mosquitto latest': not an image reference",
        ),
    ];
    for (env, extra, want) in cases {
        let mut c = b.mqttkit();
        c.envs(env.iter().copied())
            .args([
                "broker",
                "up",
                "--runtime",
                "docker",
                "--port",
                &b.port.to_string(),
            ])
            .args(extra);
        let o = run(&mut c, T);
        assert!(!o.status.success(), "{want}");
        let err = stderr(&o);
        assert!(err.contains(want), "want {want:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!b.path().join("compose.yaml").exists());
        assert!(!b.out().join("mosquitto/mosquitto.conf").exists());
    }
}
