//! Test support: a real mosquitto started by the real binary (`pki init` +
//! `broker up --runtime native`) on a free loopback port in a temp dir,
//! stopped on drop; bounded waits for every child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mqttkit")
}

/// A port that was free a moment ago on 127.0.0.1, and not one this test
/// process was handed before: the OS may give the same ephemeral port to
/// two binds in a row, and a broker with two listeners on it fails to start.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The real mosquitto binary (Debian: /usr/sbin, often not on PATH).
pub fn mosquitto_path() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mosquitto"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// The venv's Python with paho-mqtt, protobuf, grpcio-tools (and moto).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MQTTKIT_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no test Python: run `bash scripts/test.sh` once (it creates .venv) or set MQTTKIT_TEST_PYTHON"
    );
    venv
}

/// Waits for `child` at most `limit`; kills it and panics on timeout.
pub fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "{what} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs a command to completion with a time limit, capturing output
/// (assert_cmd's timeout kills it); stdin is empty. Panics on timeout.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let started = Instant::now();
    let out = assert_cmd::Command::from_std(copy_of(cmd))
        .write_stdin(Vec::new())
        .timeout(limit)
        .output()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    if out.status.code().is_none() && started.elapsed() >= limit {
        panic!(
            "{what} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The same program, arguments, environment and directory (assert_cmd takes
/// its command by value; callers keep theirs).
fn copy_of(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing both streams otherwise.
#[track_caller]
pub fn ok(o: &Output) -> &Output {
    assert!(
        o.status.success(),
        "command failed ({})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    o
}

#[derive(Debug, Default, Clone)]
pub struct BrokerOptions {
    /// Extra client identities for `pki init` (device-001 and server are always there).
    pub clients: Vec<String>,
    pub websockets: bool,
    /// Extra arguments for `broker up`.
    pub up_args: Vec<String>,
    /// Skip `broker up` (only `pki init`).
    pub no_broker: bool,
    /// Listen address (default 127.0.0.1).
    pub bind: Option<String>,
    /// Extra arguments for `pki init` (e.g. `--key-type ed25519`).
    pub init_args: Vec<String>,
}

/// A temp dir with certificates and a running mosquitto.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ws_port: Option<u16>,
    pub up_args: Vec<String>,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_with(BrokerOptions::default())
    }

    pub fn start_with(opts: BrokerOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut clients = vec!["device-001".to_string(), "server".to_string()];
        for c in &opts.clients {
            if !clients.contains(c) {
                clients.push(c.clone());
            }
        }
        let mut init = Command::new(bin());
        init.current_dir(dir.path())
            .args(["pki", "init", "--out", "out"]);
        for c in &clients {
            init.args(["--client", c]);
        }
        init.args(&opts.init_args);
        ok(&run(&mut init, Duration::from_secs(60)));
        let port = free_port();
        let ws_port = opts.websockets.then(free_port);
        let mut up_args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            opts.bind.clone().unwrap_or_else(|| "127.0.0.1".into()),
            "--runtime".into(),
            "native".into(),
        ];
        if let Some(ws) = ws_port {
            up_args.extend(["--websockets-port".into(), ws.to_string()]);
        }
        up_args.extend(opts.up_args.iter().cloned());
        let broker = Broker {
            dir,
            port,
            ws_port,
            up_args,
        };
        if !opts.no_broker {
            broker.up();
        }
        broker
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn certs(&self) -> PathBuf {
        self.out().join("certs")
    }

    /// `mqttkit` run in the temp dir (so `out/` and `--profile local` are this broker's).
    pub fn mqttkit(&self) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.dir.path());
        c.env_remove("MQTTKIT_OUT").env_remove("MQTTKIT_PROFILE");
        c
    }

    /// `broker up` with this broker's arguments (also restarts it after `stop`).
    pub fn up(&self) -> Output {
        let mut c = self.mqttkit();
        c.args([
            "broker",
            "up",
            "--out",
            "out",
            "--compose-file",
            "compose.yaml",
        ])
        .args(&self.up_args);
        ok(&run(&mut c, Duration::from_secs(60))).clone()
    }

    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.out().join("mosquitto/state.json"))
            .expect("broker state.json");
        serde_json::from_str(&text).expect("state json")
    }

    pub fn pid(&self) -> i32 {
        self.state()["pid"].as_i64().expect("pid") as i32
    }

    /// SIGTERM to mosquitto (like a crash/restart of the service); waits until it is gone.
    pub fn stop(&self) {
        self.signal_and_wait("TERM");
    }

    /// SIGKILL to mosquitto (a crash: nothing saved on the way out); waits until it is gone.
    pub fn kill(&self) {
        self.signal_and_wait("KILL");
    }

    fn signal_and_wait(&self, sig: &str) {
        let pid = self.pid();
        unsafe_kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            assert!(Instant::now() < deadline, "mosquitto {pid} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same port after `stop`.
    pub fn restart(&self) {
        self.up();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.out().join("mosquitto/mosquitto.log")).unwrap_or_default()
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn unsafe_kill(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

impl Drop for Broker {
    fn drop(&mut self) {
        let state = self.out().join("mosquitto/state.json");
        if let Ok(text) = std::fs::read_to_string(&state) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(pid) = v["pid"].as_i64() {
                let pid = pid as i32;
                if Path::new(&format!("/proc/{pid}")).exists() {
                    unsafe_kill(pid, "TERM");
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while Path::new(&format!("/proc/{pid}")).exists()
                        && !is_zombie(pid)
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
                        unsafe_kill(pid, "KILL");
                    }
                }
            }
        }
    }
}

/// mosquitto_pub/mosquitto_sub TLS arguments for identity `name` of `broker`.
pub fn mosquitto_tls_args(broker: &Broker, name: Option<&str>) -> Vec<String> {
    let certs = broker.certs();
    let mut v = vec![
        "-h".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        broker.port.to_string(),
        "--cafile".into(),
        certs.join("ca.crt").display().to_string(),
    ];
    if let Some(n) = name {
        v.extend([
            // `broker up` lets identity NAME use only client ids NAME and NAME-*:
            // NAME-<pid>.
            "-I".into(),
            format!("{n}-"),
            "--cert".into(),
            certs.join(format!("{n}.crt")).display().to_string(),
            "--key".into(),
            certs.join(format!("{n}.key")).display().to_string(),
        ]);
    }
    v
}

/// Starts mosquitto_sub in the background for `topic` as `identity`, expecting `count` messages.
pub fn mosquitto_sub(
    broker: &Broker,
    identity: &str,
    topic: &str,
    count: usize,
    secs: u32,
) -> Child {
    let child = Command::new("mosquitto_sub")
        .args(mosquitto_tls_args(broker, Some(identity)))
        .args([
            "-t",
            topic,
            "-q",
            "1",
            "-v",
            "-C",
            &count.to_string(),
            "-W",
            &secs.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // mosquitto_sub has no "subscribed" signal; give it time to SUBSCRIBE.
    std::thread::sleep(Duration::from_millis(500));
    child
}

pub fn mosquitto_pub(broker: &Broker, identity: &str, topic: &str, msg: &str) {
    ok(&run(
        Command::new("mosquitto_pub")
            .args(mosquitto_tls_args(broker, Some(identity)))
            .args(["-t", topic, "-m", msg, "-q", "1"]),
        Duration::from_secs(60),
    ));
}

/// With device-001 and device-002 issued: the server reads all telemetry,
/// a device publishes only its own, reads only its own commands, sends none.
pub fn assert_acls_confine_devices(broker: &Broker) {
    // The server receives every device's telemetry by wildcard.
    let server = mosquitto_sub(broker, "server", "devices/+/telemetry", 2, 10);
    mosquitto_pub(broker, "device-001", "devices/device-001/telemetry", "one");
    // device-001 publishing as device-002: the broker drops it.
    mosquitto_pub(
        broker,
        "device-001",
        "devices/device-002/telemetry",
        "forged",
    );
    mosquitto_pub(broker, "device-002", "devices/device-002/telemetry", "two");
    let o = wait_output(server, Duration::from_secs(60), "mosquitto_sub server");
    let got = stdout(&o);
    assert!(got.contains("devices/device-001/telemetry one"), "{got}");
    assert!(got.contains("devices/device-002/telemetry two"), "{got}");
    assert!(!got.contains("forged"), "{got}");

    // device-001 cannot read device-002's commands, device-002 can.
    let spy = mosquitto_sub(broker, "device-001", "devices/device-002/commands", 1, 3);
    let own = mosquitto_sub(broker, "device-002", "devices/device-002/commands", 1, 10);
    mosquitto_pub(broker, "server", "devices/device-002/commands", "reboot");
    let o = wait_output(own, Duration::from_secs(60), "mosquitto_sub device-002");
    assert!(stdout(&o).contains("reboot"), "{}", stdout(&o));
    let o = wait_output(spy, Duration::from_secs(60), "mosquitto_sub device-001");
    assert!(
        !stdout(&o).contains("reboot"),
        "device-001 read device-002's command"
    );
    // A device cannot send commands.
    let own = mosquitto_sub(broker, "device-002", "devices/device-002/commands", 1, 3);
    mosquitto_pub(broker, "device-001", "devices/device-002/commands", "evil");
    let o = wait_output(own, Duration::from_secs(60), "mosquitto_sub device-002");
    assert!(!stdout(&o).contains("evil"));
}

/// How long `Proc::wait_stderr` waits.
const PROC_LIMIT: Duration = Duration::from_secs(60);

/// A running mqttkit (or peer) whose stdout lines and stderr are collected
/// as they come; killed on drop.
pub struct Proc {
    what: String,
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let o = out.clone();
        let e = err.clone();
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(l) => o.lock().unwrap().push(l),
                        Err(_) => break,
                    }
                }
            }),
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    e.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }),
        ];
        Proc {
            what,
            child,
            out,
            err,
            readers,
        }
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Waits until `cond` holds, panicking (with both streams) after `limit`
    /// or when the process exits first.
    pub fn wait_for(&mut self, limit: Duration, what: &str, cond: impl Fn(&Proc) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // One last look: the readers may have been behind.
                std::thread::sleep(Duration::from_millis(100));
                if cond(self) {
                    return;
                }
                panic!(
                    "{} exited ({status}) before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.lines().join("\n"),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} : no {what} within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.lines().join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_stderr(&mut self, needle: &str) {
        let n = needle.to_string();
        self.wait_for(PROC_LIMIT, &format!("'{needle}' on stderr"), move |p| {
            p.stderr().contains(&n)
        });
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits for the exit (bounded) and returns status, stdout lines, stderr.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                panic!(
                    "{} did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.lines().join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (status, self.lines(), self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP relay on 127.0.0.1 in front of a server that counts the TLS
/// application-data records clients send through it: how many separate
/// writes a client made, however TCP split or merged the bytes.
pub struct TlsRecordCounter {
    pub port: u16,
    records: Arc<std::sync::atomic::AtomicU64>,
}

impl TlsRecordCounter {
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
        let port = listener.local_addr().expect("relay address").port();
        let records = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = records.clone();
        // Lives until the test process ends; every connection gets two relays.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (to_client, from_server) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                std::thread::spawn(move || relay(from_server, to_client, None));
                let counted = counted.clone();
                std::thread::spawn(move || relay(client, server, Some(&counted)));
            }
        });
        TlsRecordCounter { port, records }
    }

    /// Application-data records (content type 23) clients sent so far.
    pub fn records(&self) -> u64 {
        self.records.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn relay(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    count: Option<&std::sync::atomic::AtomicU64>,
) {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    let mut header = Vec::with_capacity(5);
    let mut body_left = 0usize;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        let Some(count) = count else { continue };
        // TLS record framing: 1 byte type, 2 bytes version, 2 bytes length.
        let mut i = 0;
        while i < n {
            if body_left > 0 {
                let take = body_left.min(n - i);
                body_left -= take;
                i += take;
                continue;
            }
            header.push(buf[i]);
            i += 1;
            if header.len() == 5 {
                if header[0] == 23 {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                body_left = u16::from_be_bytes([header[3], header[4]]) as usize;
                header.clear();
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
