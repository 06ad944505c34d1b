//! Issue 15, "any broker": mqttkit against a mosquitto it did not start
//! (plain TCP with a password file, TLS with client certificates), with
//! mosquitto_pub/mosquitto_sub's flag letters; user names and passwords
//! (also against `broker up --auth password`), retain, last will, QoS 2, and
//! the same command lines run through mosquitto's own clients.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_port, ok, run, stderr, stdout, Broker, BrokerOptions, Proc};

const T: Duration = Duration::from_secs(30);
const PASS: &str = "Right-Pa55word";
const WRONG: &str = "Wr0ng-Pa55word";

/// A mosquitto started here: plain TCP with a password file on `tcp`, TLS
/// with required client certificates (CN as user name) on `tls`.
struct Mosquitto {
    dir: tempfile::TempDir,
    tcp: u16,
    tls: u16,
    child: Child,
}

impl Mosquitto {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let init = Command::new(bin())
            .current_dir(dir.path())
            .args(["pki", "init", "--out", "out"])
            .output()
            .unwrap();
        ok(&init);
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        let o = Command::new("mosquitto_passwd")
            .args(["-b", passwd.to_str().unwrap(), "alice", PASS])
            .output()
            .unwrap();
        ok(&o);
        let (tcp, tls) = (free_port(), free_port());
        let certs = dir.path().join("out/certs");
        let c = |n: &str| certs.join(n).display().to_string();
        let conf = format!(
            "per_listener_settings true\npersistence false\nlog_dest file {log}\nlog_type all\n\
             max_queued_messages 100000\n\
             listener {tcp} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n\
             listener {tls} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\n",
            log = dir.path().join("log").display(),
            passwd = passwd.display(),
            ca = c("ca.crt"),
            crt = c("broker.crt"),
            key = c("broker.key"),
        );
        let mut conf = conf;
        if nix::unistd::Uid::effective().is_root() {
            // Started as root, mosquitto drops to `mosquitto`, who cannot read the temp dir.
            conf.push_str("user root\n");
        }
        std::fs::write(dir.path().join("m.conf"), conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.path().join("m.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Mosquitto {
            dir,
            tcp,
            tls,
            child,
        };
        m.wait_log(&format!("Opening ipv4 listen socket on port {tls}"));
        m
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + T;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no '{needle}' in\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until client `id` subscribed.
    fn subscribed(&self, id: &str) {
        self.wait_log(&format!("Received SUBSCRIBE from {id}"));
    }

    fn cert(&self, name: &str) -> String {
        self.dir
            .path()
            .join("out/certs")
            .join(name)
            .display()
            .to_string()
    }

    /// mosquitto's flags for the plain listener as alice.
    fn tcp_args(&self, password: &str) -> Vec<String> {
        let p = self.tcp.to_string();
        ["-h", "127.0.0.1", "-p", &p, "-u", "alice", "-P", password]
            .map(String::from)
            .to_vec()
    }

    /// mosquitto's flags for the TLS listener as identity `name`.
    fn tls_args(&self, name: &str) -> Vec<String> {
        let p = self.tls.to_string();
        let (ca, crt, key) = (
            self.cert("ca.crt"),
            self.cert(&format!("{name}.crt")),
            self.cert(&format!("{name}.key")),
        );
        [
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "--cafile",
            &ca,
            "--cert",
            &crt,
            "--key",
            &key,
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mqttkit in an empty directory: no profile, nothing but the flags.
fn mqttkit(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .env_remove("MQTTKIT_OUT")
        .env_remove("MQTTKIT_PROFILE")
        .env_remove("MQTTKIT_PASSWORD")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    c
}

/// Runs `cmd` with `input` on stdin.
fn with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    common::wait_output(child, T, "publisher")
}

fn empty_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn plain_tcp_with_a_password_file_round_trip_and_wrong_password() {
    let m = Mosquitto::start();
    let here = empty_dir();
    let url = format!("mqtt://alice@127.0.0.1:{}", m.tcp);
    let mut sub = mqttkit(here.path());
    sub.args([
        "sub",
        "-t",
        "plain/#",
        "-v",
        "-C",
        "2",
        "-W",
        "20",
        "-i",
        "sub-plain",
    ])
    .args(["-h", &url])
    .env("MQTTKIT_PASSWORD", PASS);
    let sub = Proc::spawn(sub);
    m.subscribed("sub-plain");
    let mut publ = mqttkit(here.path());
    publ.args([
        "pub",
        "-t",
        "plain/a",
        "-l",
        "-q",
        "1",
        "-h",
        &url,
        "--password-stdin",
    ]);
    // --password-stdin and -l both want stdin: refused, nothing sent.
    let o = with_stdin(publ, format!("{PASS}\nx\n").as_bytes());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--password-stdin: stdin carries the lines of -l"));
    let mut publ = mqttkit(here.path());
    publ.args(["pub", "-t", "plain/a", "-m", "hello over tcp", "-q", "1"])
        .args([
            "--no-tls",
            "-h",
            "127.0.0.1",
            "-p",
            &m.tcp.to_string(),
            "-u",
            "alice",
        ])
        .arg("--password-stdin");
    let o = with_stdin(publ, format!("{PASS}\n").as_bytes());
    ok(&o);
    let warning = stderr(&o);
    assert!(
        warning.contains("is plain MQTT over TCP, not encrypted"),
        "{warning}"
    );
    let o = run(
        mqttkit(here.path()).args(["pub", "-t", "plain/b", "-n", "-h", &url, "-P", PASS]),
        T,
    );
    ok(&o);
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(lines, ["plain/a hello over tcp", "plain/b "]);

    // The wrong password: one error line naming the problem, the password
    // nowhere, not even in every log line there is (RUST_LOG=trace).
    let o = run(
        mqttkit(here.path())
            .args([
                "pub", "-t", "plain/a", "-m", "x", "-q", "1", "-h", &url, "-P", WRONG,
            ])
            .env("RUST_LOG", "trace"),
        T,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("bad user name or password"), "{err}");
    assert!(!err.contains(WRONG) && !stdout(&o).contains(WRONG), "{err}");
    // doctor names it too, with the fix.
    let o = run(
        mqttkit(here.path())
            .args(["doctor", "--server", "-H", &url])
            .env("MQTTKIT_PASSWORD", WRONG),
        T,
    );
    assert!(!o.status.success());
    let report = stdout(&o);
    assert!(
        report.contains("no TLS (plain TCP, not encrypted)"),
        "{report}"
    );
    assert!(report.contains("bad user name or password"), "{report}");
    assert!(
        report.contains("fix: check the user name and password"),
        "{report}"
    );
    assert!(!report.contains(WRONG) && !stderr(&o).contains(WRONG));
    // No user name at all: named as "not authorized", with -u in the fix.
    let plain = format!("mqtt://127.0.0.1:{}", m.tcp);
    let o = run(
        mqttkit(here.path()).args(["pub", "-t", "a", "-m", "x", "-h", &plain]),
        T,
    );
    assert!(stderr(&o).contains("not authorized; the identity is not allowed: pass -u USER"));
}

#[test]
fn a_retained_message_reaches_a_later_subscriber() {
    let m = Mosquitto::start();
    let here = empty_dir();
    let url = format!("mqtt://alice@127.0.0.1:{}", m.tcp);
    let o = run(
        mqttkit(here.path())
            .args([
                "pub",
                "-t",
                "keep/state",
                "-m",
                "on",
                "-r",
                "-q",
                "1",
                "-h",
                &url,
            ])
            .env("MQTTKIT_PASSWORD", PASS),
        T,
    );
    ok(&o);
    let o = run(
        mqttkit(here.path())
            .args([
                "sub", "-t", "keep/#", "-C", "1", "-W", "10", "-h", &url, "--json",
            ])
            .env("MQTTKIT_PASSWORD", PASS),
        T,
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["payload"], "on");
    assert_eq!(v["retain"], true);
    // -W: nothing more arrives, so the run ends with mosquitto_sub's status 27.
    let o = run(
        mqttkit(here.path())
            .args([
                "sub",
                "-t",
                "nothing/here",
                "-C",
                "1",
                "-W",
                "1",
                "-h",
                &url,
            ])
            .env("MQTTKIT_PASSWORD", PASS),
        T,
    );
    assert_eq!(o.status.code(), Some(27), "{}", stderr(&o));
}

#[test]
fn the_last_will_is_published_when_a_client_is_killed() {
    let m = Mosquitto::start();
    let here = empty_dir();
    let url = format!("mqtt://alice@127.0.0.1:{}", m.tcp);
    let mut watcher = mqttkit(here.path());
    watcher
        .args([
            "sub", "-t", "wills/#", "-v", "-C", "1", "-W", "20", "-i", "watcher", "-h", &url,
        ])
        .env("MQTTKIT_PASSWORD", PASS);
    let watcher = Proc::spawn(watcher);
    m.subscribed("watcher");
    let mut doomed = mqttkit(here.path());
    doomed
        .args(["sub", "-t", "x", "-i", "doomed", "-h", &url, "-q", "2"])
        .args([
            "--will-topic",
            "wills/doomed",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ])
        .env("MQTTKIT_PASSWORD", PASS);
    let doomed = Proc::spawn(doomed);
    m.subscribed("doomed");
    doomed.signal(nix::sys::signal::Signal::SIGKILL);
    let (status, lines, err) = watcher.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(lines, ["wills/doomed gone"]);
    drop(doomed);
}

#[test]
fn qos2_two_thousand_lines_arrive_exactly_once() {
    let m = Mosquitto::start();
    let here = empty_dir();
    let url = format!("mqtt://alice@127.0.0.1:{}", m.tcp);
    let mut sub = mqttkit(here.path());
    sub.args([
        "sub", "-t", "q2/lines", "-q", "2", "-C", "2000", "-W", "60", "-i", "q2-sub", "-h", &url,
    ])
    .env("MQTTKIT_PASSWORD", PASS);
    let sub = Proc::spawn(sub);
    m.subscribed("q2-sub");
    let input: String = (0..2000).map(|i| format!("line {i:04}\n")).collect();
    let mut publ = mqttkit(here.path());
    publ.args([
        "pub",
        "-t",
        "q2/lines",
        "-l",
        "-q",
        "2",
        "-h",
        &url,
        "--json-summary",
    ])
    .env("MQTTKIT_PASSWORD", PASS);
    let started = Instant::now();
    let o = with_stdin(publ, input.as_bytes());
    ok(&o);
    let summary: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(summary["acked"], 2000, "{summary}");
    assert_eq!(summary["qos"], 2);
    let (status, lines, err) = sub.finish(T);
    eprintln!("2000 lines at QoS 2 in {:?}", started.elapsed());
    assert!(status.success(), "{err}");
    let expected: Vec<String> = (0..2000).map(|i| format!("line {i:04}")).collect();
    assert_eq!(lines, expected, "each line once, in order");
}

/// The same command line through mosquitto_sub and mqttkit sub, fed by
/// mosquitto_pub and by mqttkit pub: the same deliveries. `ours` is added
/// to mqttkit's lines only: `--no-tls`, as mqttkit never falls back to plain
/// TCP unasked (mosquitto's clients are plain unless given a TLS flag).
fn same_deliveries(
    m: &Mosquitto,
    sub_args: &[String],
    pub_args: &[String],
    topic: &str,
    ours_extra: &[&str],
) {
    let here = empty_dir();
    let sub_line = |id: &str| -> Vec<String> {
        let mut v = sub_args.to_vec();
        v.extend(
            [
                "-t", topic, "-q", "1", "-v", "-C", "6", "-W", "20", "-i", id,
            ]
            .map(String::from),
        );
        v
    };
    // Client ids of this round only: the log is searched for them.
    let round = topic.replace('/', "-");
    let (our_id, their_id) = (format!("ours-{round}"), format!("theirs-{round}"));
    let mut ours = mqttkit(here.path());
    ours.arg("sub").args(sub_line(&our_id)).args(ours_extra);
    let mut theirs = Command::new("mosquitto_sub");
    theirs.args(sub_line(&their_id));
    let (ours, theirs) = (Proc::spawn(ours), Proc::spawn(theirs));
    m.subscribed(&our_id);
    m.subscribed(&their_id);
    let pub_lines: [&[&str]; 2] = [&["-m", "single", "-q", "1"], &["-l", "-q", "1"]];
    for publisher in ["mosquitto_pub", "mqttkit"] {
        for extra in pub_lines {
            let mut c = if publisher == "mqttkit" {
                let mut c = mqttkit(here.path());
                c.arg("pub").args(ours_extra);
                c
            } else {
                Command::new(publisher)
            };
            c.args(pub_args).args(["-t", topic]).args(extra);
            ok(&with_stdin(c, b"line one\nline two\n"));
        }
    }
    let (s1, ours, e1) = ours.finish(T);
    let (s2, theirs, e2) = theirs.finish(T);
    assert!(s1.success() && s2.success(), "{e1}\n{e2}");
    let expected: Vec<String> = ["single", "line one", "line two"]
        .repeat(2)
        .iter()
        .map(|p| format!("{topic} {p}"))
        .collect();
    assert_eq!(ours, expected);
    assert_eq!(theirs, expected);
}

#[test]
fn mosquitto_command_lines_give_the_same_deliveries() {
    let m = Mosquitto::start();
    // Plain TCP, user name and password (mqttkit warns; mosquitto does not).
    same_deliveries(
        &m,
        &m.tcp_args(PASS),
        &m.tcp_args(PASS),
        "same/tcp",
        &["--no-tls"],
    );
    // TLS with --cafile/--cert/--key.
    same_deliveries(
        &m,
        &m.tls_args("server"),
        &m.tls_args("device-001"),
        "same/tls",
        &[],
    );
}

/// `broker up --auth password`: users from `broker user add`, TLS by the profile.
#[test]
fn password_broker_from_broker_up() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        up_args: vec!["--auth".into(), "password".into()],
        ..Default::default()
    });
    for user in ["device-001", "server"] {
        let mut c = broker.mqttkit();
        c.args(["broker", "user", "add", user, "--password-stdin"]);
        ok(&with_stdin(c, format!("{PASS}-{user}\n").as_bytes()));
    }
    broker.up();
    let mut sub = broker.mqttkit();
    sub.args([
        "sub",
        "-t",
        "devices/+/telemetry",
        "-v",
        "-C",
        "1",
        "-W",
        "20",
    ])
    .args(["-u", "server", "-i", "pw-sub"])
    .env("MQTTKIT_PASSWORD", format!("{PASS}-server"));
    let mut sub = Proc::spawn(sub);
    sub.wait_stderr("subscribed to devices/+/telemetry");
    let topic = "devices/device-001/telemetry";
    let o = run(
        broker
            .mqttkit()
            .args([
                "pub",
                "-t",
                topic,
                "-m",
                "by password",
                "-q",
                "1",
                "-u",
                "device-001",
            ])
            .args(["-P", &format!("{PASS}-device-001")]),
        T,
    );
    ok(&o);
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(lines, [format!("{topic} by password")]);
    let o = run(
        broker.mqttkit().args([
            "pub",
            "-t",
            topic,
            "-m",
            "x",
            "-q",
            "1",
            "-u",
            "device-001",
            "-P",
            WRONG,
        ]),
        T,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bad user name or password"), "{err}");
    assert!(!err.contains(WRONG), "{err}");
}

/// No --cafile and no profile: the OS trust store (here SSL_CERT_FILE, which
/// rustls-native-certs reads first) decides.
#[test]
fn os_trust_roots_without_cafile() {
    let m = Mosquitto::start();
    let here = empty_dir();
    let ca: PathBuf = m.cert("ca.crt").into();
    let args = |c: &mut Command| {
        c.args([
            "pub",
            "-t",
            "os/roots",
            "-m",
            "x",
            "-q",
            "1",
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &m.tls.to_string()])
        .args([
            "--cert",
            &m.cert("device-001.crt"),
            "--key",
            &m.cert("device-001.key"),
        ]);
    };
    let mut c = mqttkit(here.path());
    args(&mut c);
    c.env("SSL_CERT_FILE", &ca);
    ok(&run(&mut c, T));
    let mut c = mqttkit(here.path());
    args(&mut c);
    // An empty store: the broker's CA is unknown.
    let empty = here.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    c.env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", here.path());
    let o = run(&mut c, T);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("OS trust store"), "{}", stderr(&o));
}

/// QoS 2 through the protobuf flows and the sink: `pub telemetry -q 2` into
/// `sub telemetry --sink -q 2`, every reading stored once.
#[test]
fn qos2_telemetry_into_the_sink() {
    let broker = Broker::start();
    let url = format!("sqlite:{}", broker.path().join("q2.db").display());
    let mut sink = broker.mqttkit();
    sink.args([
        "sub",
        "telemetry",
        "--out",
        "out",
        "--sink",
        &url,
        "-q",
        "2",
        "-C",
        "300",
    ]);
    let mut sink = Proc::spawn(sink);
    sink.wait_stderr("subscribed to");
    let o = run(
        broker.mqttkit().args([
            "pub",
            "telemetry",
            "--out",
            "out",
            "--count",
            "300",
            "-q",
            "2",
            "--json",
        ]),
        T,
    );
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["acked"], 300, "{summary}");
    let (status, _, err) = sink.finish(T);
    assert!(status.success(), "{err}");
    let o = run(broker.mqttkit().args(["sink", "stats", &url, "--json"]), T);
    ok(&o);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["rows"], 300, "{stats}");
    // 300 rows holding seqs 0..=299 with no gap: each reading exactly once.
    let device = &stats["devices"][0];
    assert_eq!(
        (&device["first_seq"], &device["last_seq"]),
        (&0.into(), &299.into())
    );
    assert_eq!(device["gaps"], serde_json::json!([]), "{stats}");
}

/// `pub -t devices/ID/telemetry` on mqttkit's own broker goes out as device
/// ID (its ACL drops it from any other identity) and reaches `sub -t`.
#[test]
fn raw_pub_to_a_device_topic_acts_as_that_device() {
    let broker = Broker::start();
    let mut sub = broker.mqttkit();
    sub.args([
        "sub",
        "-t",
        "devices/+/telemetry",
        "-v",
        "-C",
        "1",
        "-W",
        "20",
    ]);
    let mut sub = Proc::spawn(sub);
    sub.wait_stderr("subscribed to");
    let topic = "devices/device-001/telemetry";
    ok(&run(
        broker
            .mqttkit()
            .args(["pub", "-t", topic, "-m", "raw bytes", "-q", "1"]),
        T,
    ));
    let (status, lines, err) = sub.finish(T);
    assert!(status.success(), "{err}");
    assert_eq!(lines, [format!("{topic} raw bytes")]);
}
