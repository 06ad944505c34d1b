//! Support for the sink tests: the sink as a child process, the
//! kill-and-restart flow, and real PostgreSQL, InfluxDB and moto servers on
//! free loopback ports in temp dirs, stopped on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Broker};

pub const DEVICE: &str = "device-001";

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

fn gone(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// Stops `child`: `sig` first, SIGKILL after `grace`.
fn stop_child(child: &mut Child, sig: &str, grace: Duration) {
    if gone(child) {
        return;
    }
    signal(child.id(), sig);
    let deadline = Instant::now() + grace;
    while !gone(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !gone(child) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `mqttkit sub telemetry --sink URL` running in the broker's dir; its stderr
/// goes to a file so it can be read while it runs.
pub struct SinkProc {
    pub child: Child,
    pub log: PathBuf,
}

impl SinkProc {
    pub fn start(broker: &Broker, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let n = std::fs::read_dir(broker.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = broker.path().join(format!("sink-{n}.log"));
        let err = std::fs::File::create(&log).expect("sink log");
        let mut cmd = broker.mqttkit();
        cmd.args(["sub", "telemetry", "--out", "out", "--sink", url])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let child = cmd.spawn().expect("spawning the sink");
        SinkProc { child, log }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the sink holds its subscription (new or resumed).
    pub fn wait_subscribed(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let err = self.stderr();
            if err.contains("sink: subscribed to") || err.contains("sink: resumed the session") {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the sink exited ({st}) before subscribing:\n{err}");
            }
            assert!(
                Instant::now() < deadline,
                "the sink did not subscribe:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the sink must flush and exit 0 on its own.
    pub fn terminate(&mut self) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                assert!(
                    st.success(),
                    "the sink exited with {st}:\n{}",
                    self.stderr()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sink ignored SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SinkProc {
    fn drop(&mut self) {
        stop_child(&mut self.child, "KILL", Duration::from_secs(1));
    }
}

/// `mqttkit sink stats URL --json`.
pub fn stats(broker: &Broker, url: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let mut c = broker.mqttkit();
    c.args(["sink", "stats", url, "--json"])
        .envs(env.iter().copied());
    let o = common::ok(&common::run(&mut c, Duration::from_secs(30))).clone();
    serde_json::from_slice(&o.stdout).expect("stats JSON")
}

pub fn rows(broker: &Broker, url: &str, env: &[(&str, &str)]) -> u64 {
    stats(broker, url, env)["rows"].as_u64().unwrap_or(0)
}

/// `total` QoS 1 messages from `pub telemetry`; the sink is SIGKILLed once
/// some (not all) are stored and started again with the same client id;
/// then every row must be there exactly once.
pub fn kill_restart_flow(broker: &Broker, url: &str, total: u64, env: &[(&str, &str)]) {
    kill_restart_flow_of(broker, url, total, env, &Publisher::default());
}

/// Who publishes in [`kill_restart_flow_of`]: `pub telemetry` with these
/// arguments, at this rate, as this device.
pub struct Publisher<'a> {
    pub args: &'a [&'a str],
    pub rate: u32,
    pub device: &'a str,
}

impl Default for Publisher<'_> {
    fn default() -> Self {
        Publisher {
            args: &[],
            rate: 2500,
            device: DEVICE,
        }
    }
}

/// [`kill_restart_flow`] with another publisher; `env` goes to every
/// command (e.g. `MQTTKIT_SCHEMA`).
pub fn kill_restart_flow_of(
    broker: &Broker,
    url: &str,
    total: u64,
    env: &[(&str, &str)],
    publisher: &Publisher,
) {
    let mut sink = SinkProc::start(broker, url, &[], env);
    sink.wait_subscribed();
    let rate = publisher.rate.to_string();
    let device = publisher.device;
    let mut publisher = {
        let mut c = broker.mqttkit();
        c.args(["pub", "telemetry", "--out", "out", "--count"])
            .arg(total.to_string())
            .args(["--rate", &rate, "--qos", "1"])
            .args(publisher.args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let publisher = publisher.spawn().expect("spawning pub telemetry");

    // Kill the sink part way: after some rows are committed, well before all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before_kill = loop {
        let n = rows(broker, url, env);
        if n >= total / 5 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "the sink stored only {n} rows:\n{}",
            sink.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    sink.kill9();
    assert!(
        before_kill < total,
        "the sink was killed too late ({before_kill} rows)"
    );

    let mut sink = SinkProc::start(broker, url, &[], env);
    sink.wait_subscribed();
    assert!(
        sink.stderr().contains("resumed the session"),
        "the restarted sink did not resume its session:\n{}",
        sink.stderr()
    );
    let out = common::wait_output(publisher, Duration::from_secs(120), "pub telemetry");
    common::ok(&out);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = rows(broker, url, env);
        if n >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {total} rows:\n{}",
            sink.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sink.terminate();

    let s = stats(broker, url, env);
    assert_eq!(s["rows"], total, "{s}");
    let devices = s["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 1, "{s}");
    let d = &devices[0];
    assert_eq!(d["device_id"], device, "{s}");
    assert_eq!(d["rows"], total, "{s}");
    assert_eq!(d["first_seq"], 0, "{s}");
    assert_eq!(d["last_seq"], total - 1, "{s}");
    assert_eq!(d["missing"], 0, "{s}");
    assert_eq!(d["gaps"], serde_json::json!([]), "{s}");
    let (first, last) = (
        d["first_time_unix_nano"].as_i64().unwrap(),
        d["last_time_unix_nano"].as_i64().unwrap(),
    );
    assert!(first > 0 && first <= last, "{s}");
}

fn wait_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{what} exited ({st}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A throwaway PostgreSQL cluster from Debian's `postgresql` package.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

pub fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join(name).exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql/*/bin"))
        .join(name)
}

/// postgres refuses to run as root: as root, run it as the `postgres` user
/// (setpriv execs in place, so the child's pid is postgres' own).
fn as_pg_user(program: &Path) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// With `Some((cert, key))`: TLS on, and `pg_hba.conf` admits TLS
    /// connections only, so a plaintext client is refused.
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if nix::unistd::Uid::effective().is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let data = dir.path().join("data");
        let out = common::run(
            as_pg_user(&pg_bin("initdb")).arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
            Duration::from_secs(120),
        );
        common::ok(&out);
        let mut tls_args: Vec<String> = Vec::new();
        if let Some((cert, key)) = tls {
            // Copies postgres owns; it refuses a key others can read.
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(cert, &c).expect("copy cert");
            std::fs::copy(key, &k).expect("copy key");
            std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod key");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
            if nix::unistd::Uid::effective().is_root() {
                for f in [&c, &k, &data.join("pg_hba.conf")] {
                    let st = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(f)
                        .status()
                        .expect("chown");
                    assert!(st.success());
                }
            }
            tls_args = vec![
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", c.display()),
                "-c".into(),
                format!("ssl_key_file={}", k.display()),
            ];
        }
        let port = common::free_port();
        let log = dir.path().join("postgres.log");
        let err = std::fs::File::create(&log).expect("log");
        if nix::unistd::Uid::effective().is_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&log)
                .status();
        }
        let mut child = as_pg_user(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(&tls_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawning postgres");
        wait_port(port, &mut child, "postgres", &log);
        let pg = Postgres { dir, port, child };
        // Accepting TCP is not yet accepting queries: wait for that too.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = common::run(
                Command::new(pg_bin("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p"])
                    .arg(port.to_string()),
                Duration::from_secs(10),
            );
            if o.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "postgres never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let o = common::run(
            Command::new("psql")
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-p",
                ])
                .arg(self.port.to_string())
                .args(["-d", db, "-c", sql]),
            Duration::from_secs(30),
        );
        common::stdout(common::ok(&o)).trim().to_string()
    }
}

impl Postgres {
    /// Gives `postgres` a password and makes TCP connections need it
    /// (SCRAM); the unix socket stays trusted.
    pub fn require_password(&self, password: &str) {
        self.psql(
            "postgres",
            &format!("ALTER USER postgres PASSWORD '{password}'"),
        );
        let hba = self.dir.path().join("data/pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        // The last statement over TCP without a password.
        self.psql("postgres", "SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is postgres' fast shutdown.
        stop_child(&mut self.child, "INT", Duration::from_secs(10));
    }
}

/// InfluxDB 1.x from Debian's `influxdb` package, loopback only.
pub struct Influx {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Influx {
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// With `Some((cert, key))` the HTTP API is HTTPS only.
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let rpc = common::free_port();
        let d = dir.path();
        let conf = format!(
            "reporting-disabled = true\n\
             bind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{meta}\"\n\
             [data]\n  dir = \"{data}\"\n  wal-dir = \"{wal}\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [continuous_queries]\n  enabled = false\n\
             [subscriber]\n  enabled = false\n",
            meta = d.join("meta").display(),
            data = d.join("data").display(),
            wal = d.join("wal").display(),
        );
        let https = match tls {
            Some((cert, key)) => format!(
                "  https-enabled = true\n  https-certificate = \"{}\"\n  https-private-key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        // The [http] section is the last one that ends before [monitor].
        let conf = conf.replacen("[monitor]", &format!("{https}[monitor]"), 1);
        let conf_path = d.join("influxdb.conf");
        std::fs::write(&conf_path, conf).expect("influx config");
        let log = d.join("influxd.log");
        let err = std::fs::File::create(&log).expect("log");
        let mut child = Command::new("influxd")
            .arg("-config")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawning influxd (apt-get install influxdb; scripts/test.sh does)");
        wait_port(port, &mut child, "influxd", &log);
        Influx { dir, port, child }
    }

    /// GET /query with InfluxQL; the JSON answer.
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(self.port, &format!("/query?db={db}&epoch=ns&q={enc}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        stop_child(&mut self.child, "TERM", Duration::from_secs(10));
    }
}

/// A minimal HTTP/1.0 GET on loopback (the body).
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}\n{body}"
    );
    body.to_string()
}

/// moto's server, in a Python process that can also dump the Timestream
/// table contents and the size of every WriteRecords call.
pub struct Moto {
    pub port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

pub const MOTO_REGION: &str = "us-east-1";

impl Moto {
    pub fn start() -> Self {
        let port = common::free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sink_timestream_moto.py");
        let mut child = Command::new(common::python())
            .arg(script)
            .arg(port.to_string())
            .arg(MOTO_REGION)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning moto");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("moto ready line");
        assert!(line.starts_with("ready"), "moto did not start: {line:?}");
        Moto {
            port,
            child,
            stdin,
            stdout,
        }
    }

    /// The environment aws-config reads: region, fake credentials, this endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_REGION".into(), MOTO_REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub fn dump(&mut self) -> serde_json::Value {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "dump").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("dump line");
        serde_json::from_str(&line).expect("dump JSON")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stdin.take(); // EOF: the script stops the server and exits
        stop_child(&mut self.child, "TERM", Duration::from_secs(5));
    }
}

/// The devices of the poison flow: two good publishers and one that sends bad messages.
pub const POISONER: &str = "device-003";

/// A broker whose PKI also has device-002 and the poisoner.
pub fn poison_broker() -> Broker {
    Broker::start_with(common::BrokerOptions {
        clients: vec!["device-002".into(), POISONER.into()],
        ..Default::default()
    })
}

/// A Telemetry of the poisoner as protobuf bytes.
pub fn telemetry_bytes(seq: u64, f: impl FnOnce(&mut mqttkit::proto::Telemetry)) -> Vec<u8> {
    use prost::Message;
    let mut t = mqttkit::proto::Telemetry {
        device_id: POISONER.into(),
        seq,
        time_unix_nano: mqttkit::clock::now_unix_nano() as u64,
        temperature_c: 20.0,
        humidity_pct: 40.0,
        pressure_hpa: 1000.0,
        battery_v: 3.7,
        rssi_dbm: -60,
        status: 1,
    };
    f(&mut t);
    t.encode_to_vec()
}

/// The bad messages, in the order sent: a retained round ends with the
/// 300 KiB one, so it stays retained for every subscriber that comes later.
/// `None` payload: mosquitto_pub -n (empty).
fn poison_messages(round: u64) -> Vec<(&'static str, Option<Vec<u8>>)> {
    let big = telemetry_bytes(100 + round, |t| t.device_id = "x".repeat(300 * 1024));
    let nan = telemetry_bytes(round, |t| {
        t.temperature_c = f64::NAN;
        t.humidity_pct = f64::INFINITY;
    });
    vec![
        ("empty", None),
        ("garbage", Some(b"\xff\xfe not a protobuf message".to_vec())),
        ("nan", Some(nan)),
        ("big", Some(big)),
    ]
}

/// Publishes one message as the poisoner with mosquitto_pub (QoS 1).
fn poison_pub_retained(broker: &Broker, payload: Option<&[u8]>, retain: bool) {
    let mut c = Command::new("mosquitto_pub");
    c.args(common::mosquitto_tls_args(broker, Some(POISONER)))
        .args(["-q", "1", "-t", &format!("devices/{POISONER}/telemetry")]);
    if retain {
        c.arg("-r");
    }
    let file = tempfile::NamedTempFile::new_in(broker.path()).expect("temp file");
    match payload {
        Some(bytes) => {
            std::fs::write(file.path(), bytes).expect("payload file");
            c.arg("-f").arg(file.path());
        }
        None => {
            c.arg("-n");
        }
    }
    common::ok(&common::run(&mut c, Duration::from_secs(30)));
}

/// What the poison flow must leave in a store: every good row, the NaN
/// readings, and the rejected ones counted for the poisoner.
pub fn check_poison_stats(s: &serde_json::Value, per_device: u64, rejected: u64) {
    assert_eq!(s["rows"], 2 * per_device + 2, "{s}");
    let devices = s["devices"].as_array().expect("devices");
    for (d, rows) in devices.iter().zip([per_device, per_device, 2]) {
        assert_eq!(d["rows"], rows, "{s}");
        assert_eq!(d["missing"], 0, "{s}");
    }
    assert_eq!(devices[2]["device_id"], POISONER, "{s}");
    assert_eq!(s["rejected"], rejected, "{s}");
    assert_eq!(s["rejected_devices"][0]["device_id"], POISONER, "{s}");
    assert_eq!(s["rejected_devices"][0]["rejected"], rejected, "{s}");
}

/// How many times a consumer's stderr says it reconnected.
pub fn reconnects(stderr: &str) -> usize {
    stderr.matches("reconnected to").count()
}

/// The reasons the sink warns with, one per bad message.
pub const REASONS: [&str; 3] = [
    "empty payload, not a Telemetry",
    "not a Telemetry message",
    "larger than any Telemetry",
];

/// The whole flow against a store: the sink stores all good rows while the
/// poisoner sends its messages; a second sink started afterwards gets the
/// retained 300 KiB message, quarantines it and goes on. Returns the stats.
pub fn poison_flow(
    broker: &Broker,
    url: &str,
    env: &[(&str, &str)],
    extra: Option<Vec<u8>>,
) -> serde_json::Value {
    const PER_DEVICE: u64 = 2000;
    let extra_rejected = u64::from(extra.is_some());
    let mut sink = SinkProc::start(broker, url, &["--batch-ms", "50"], env);
    sink.wait_subscribed();
    publish_with_poison(broker, PER_DEVICE, extra);
    let want = 6 + extra_rejected;
    wait_stats(broker, url, env, &sink, |s| {
        s["rows"] == 2 * PER_DEVICE + 2 && s["rejected"] == want
    });
    sink.terminate();
    let err = sink.stderr();
    for reason in REASONS {
        assert_eq!(err.matches(reason).count(), 2, "{reason}:\n{err}");
    }
    assert!(reconnects(&err) <= 1, "{err}");
    assert!(err.contains(&format!("{want} rejected")), "{err}");

    // A subscriber that starts now gets the retained 300 KiB message first.
    let mut late = SinkProc::start(broker, url, &["--client-id", "late-sink"], env);
    late.wait_subscribed();
    wait_stats(broker, url, env, &late, |s| s["rejected"] == want + 1);
    late.terminate();
    assert!(late.stderr().contains(REASONS[2]), "{}", late.stderr());
    assert!(reconnects(&late.stderr()) <= 1, "{}", late.stderr());
    let s = stats(broker, url, env);
    check_poison_stats(&s, PER_DEVICE, want + 1);
    s
}

/// Polls `sink stats` until `done` (at most 60 s).
fn wait_stats(
    broker: &Broker,
    url: &str,
    env: &[(&str, &str)],
    sink: &SinkProc,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stats(broker, url, env);
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", sink.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends every poison message once normally and once retained, while
/// device-001 and device-002 publish `per_device` QoS 1 messages each.
/// `extra` (sent once, normally) is a message the store itself refuses.
pub fn publish_with_poison(broker: &Broker, per_device: u64, extra: Option<Vec<u8>>) {
    let publishers: Vec<Child> = ["device-001", "device-002"]
        .iter()
        .map(|d| {
            let mut c = broker.mqttkit();
            c.args(["pub", "telemetry", "--out", "out", "--device-id", d])
                .args(["--qos", "1", "--count", &per_device.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().expect("spawning pub telemetry")
        })
        .collect();
    for (round, retain) in [(0, false), (1, true)] {
        for (_, payload) in poison_messages(round) {
            poison_pub_retained(broker, payload.as_deref(), retain);
        }
    }
    if let Some(bytes) = extra {
        poison_pub_retained(broker, Some(&bytes), false);
    }
    for p in publishers {
        common::ok(&common::wait_output(
            p,
            Duration::from_secs(120),
            "pub telemetry",
        ));
    }
}
