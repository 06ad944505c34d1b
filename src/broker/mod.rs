//! `mqttkit broker`: a Mosquitto broker with mutual TLS and per-device ACLs,
//! rendered from `templates/` and run natively or with docker compose
//! (`docker compose` v2 or `docker-compose` v1, see docker.rs).
//!
//! Layout under `OUT/mosquitto/`: `mosquitto.conf`, `acl`, `passwd`, `data/`,
//! `mosquitto.log` and `state.json` (what `up` started, for `status`/`down`).

mod docker;
mod logs;
mod native;
pub mod passwd;
mod plugin;
mod render;
mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::fsutil::{write_atomic, MODE_SECRET};
use crate::mqtt::{self, profile, ConnectSpec, Role};
use crate::note;
use crate::output;
pub use docker::{Compose, DEFAULT_IMAGE};
pub use up::{up, UpConfig};

pub use render::{MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES};

/// The first line of every compose file `up` renders (templates/compose.yaml).
const COMPOSE_MARKER: &str = "rendered by `mqttkit broker up`";

#[derive(Debug, Args)]
pub struct BrokerArgs {
    #[command(subcommand)]
    pub command: BrokerCommand,
}

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Render the configuration and start the broker; returns once it accepts a client certificate.
    Up(UpArgs),
    /// Is the broker running and accepting connections? Exit 0 only if so.
    Status(StatusArgs),
    /// Stop the broker `up` started (and nothing else).
    Down(DownArgs),
    /// Show the broker's log.
    Logs(LogsArgs),
    /// Manage password-file users (for --auth password|both).
    User(UserArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Docker when an engine answers, else the native mosquitto binary.
    #[default]
    Auto,
    /// `docker compose -f COMPOSE up -d` (or `docker-compose` v1 without the plugin).
    Docker,
    /// The `mosquitto` binary, in the background.
    Native,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Client certificates; the certificate CN is the user name.
    #[default]
    Cert,
    /// User name and password from the password file (no client certificate).
    Password,
    /// A client certificate and a user name/password.
    Both,
}

/// What a broker crash (SIGKILL, power loss of the process) may take of the
/// QoS 1/2 messages it has already acknowledged. Mosquitto keeps sessions and
/// queues in memory and writes a full snapshot (`data/mosquitto.db`): only
/// what is in the last snapshot survives a crash; a clean stop saves all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A snapshot every 10 s: a crash loses up to the last 10 s of
    /// acknowledged messages and of new sessions and subscriptions.
    #[default]
    Balanced,
    /// A snapshot after every change (`autosave_on_changes`), written right
    /// after the network round in which the broker acknowledged: a crash
    /// loses only what it acknowledged while that snapshot was written
    /// (measured: 0 of 3,000, 16 of 50,000 queued). Costs throughput that
    /// grows with the stored queue (each snapshot is the whole database).
    Strict,
}

impl Durability {
    /// mosquitto's `autosave_on_changes` and `autosave_interval` for it.
    pub fn autosave(self) -> (bool, u32) {
        match self {
            Durability::Balanced => (false, 10),
            Durability::Strict => (true, 1),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Balanced => "balanced",
            Durability::Strict => "strict",
        }
    }

    /// What a crash may lose, in one phrase.
    pub fn loss_window(self) -> &'static str {
        match self {
            Durability::Balanced => "a crash loses up to 10 s of acknowledged messages",
            Durability::Strict => {
                "a crash loses at most what was acknowledged while the last snapshot was written"
            }
        }
    }
}

impl Auth {
    fn as_str(self) -> &'static str {
        match self {
            Auth::Cert => "cert",
            Auth::Password => "password",
            Auth::Both => "both",
        }
    }
}

#[derive(Debug, Args)]
pub struct OutDir {
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub out: OutDir,
    /// MQTT over TLS port.
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// Address to listen on (default: all addresses).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub runtime: Runtime,
    /// Where to write the compose file.
    #[arg(long, value_name = "PATH", default_value = "compose.yaml")]
    pub compose_file: PathBuf,
    /// The mosquitto image compose.yaml runs (a pinned version, a private mirror).
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Also listen for MQTT over TLS WebSocket on this port.
    #[arg(long, value_name = "N")]
    pub websockets_port: Option<u16>,
    #[arg(long, value_enum, default_value_t)]
    pub auth: Auth,
    /// Identity (certificate CN or user) allowed to read all telemetry and send commands; repeatable.
    #[arg(long = "server-identity", value_name = "NAME", default_value = crate::pki::DEFAULT_SERVER)]
    pub server_identities: Vec<String>,
    /// What a broker crash may lose of acknowledged QoS 1/2 messages:
    /// balanced (a snapshot every 10 s) or strict (a snapshot after every
    /// change; slower). A clean `broker down` saves everything either way.
    #[arg(long, value_enum, default_value_t)]
    pub durability: Durability,
    /// Let any identity connect with any client id (no client-id binding
    /// plugin; for a mosquitto that cannot load it, e.g. 1.x): then one
    /// identity can take over, or with a clean session destroy, another's
    /// session.
    #[arg(long)]
    pub allow_any_client_id: bool,
    /// Render the ACL from this schema's topic map (its telemetry and
    /// command topics, {device} = the identity) instead of devices/{id}/...
    #[arg(long, value_name = "FILE", env = "MQTTKIT_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// How long to wait for the broker to accept a connection: 20s, 1m (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = crate::units::parse_positive_duration)]
    pub timeout: Duration,
    /// Print what was started (runtime, pid, port, files) as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub out: OutDir,
    /// Print the state (runtime, pid, port, health) as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub out: OutDir,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub out: OutDir,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (autosave notices are left out and not counted).
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
    /// One JSON object per log line on stdout: {"time": RFC 3339 (when the line has one), "line"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add (or change the password of) a user in OUT/mosquitto/passwd.
    Add(UserAddArgs),
    /// Remove a user from OUT/mosquitto/passwd.
    Remove(UserRemoveArgs),
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    pub name: String,
    /// Read the password from standard input (one line) instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub out: OutDir,
}

#[derive(Debug, Args)]
pub struct UserRemoveArgs {
    pub name: String,
    #[command(flatten)]
    pub out: OutDir,
}

/// What `up` started, so `status`/`down` act on that and nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerState {
    pub runtime: Runtime,
    pub port: u16,
    pub websockets_port: Option<u16>,
    pub auth: Auth,
    /// Native: the mosquitto process id.
    pub pid: Option<i32>,
    pub conf: PathBuf,
    pub compose_file: Option<PathBuf>,
    /// Docker: the compose tool that started it (absent in older state files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<Compose>,
    pub log: PathBuf,
    pub started_at: String,
}

/// Is the broker described by `state` running?
pub fn is_running(state: &BrokerState) -> bool {
    native::is_running(state)
}

pub fn mosquitto_dir(out: &Path) -> PathBuf {
    out.join("mosquitto")
}

fn state_path(out: &Path) -> PathBuf {
    mosquitto_dir(out).join("state.json")
}

pub fn load_state(out: &Path) -> Result<Option<BrokerState>> {
    let path = state_path(out);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: not a valid broker state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub async fn run(args: BrokerArgs) -> Result<ExitCode> {
    match args.command {
        BrokerCommand::Up(a) => up(&a.config()).await,
        BrokerCommand::Status(a) => status(a).await,
        BrokerCommand::Down(a) => down(a).await,
        BrokerCommand::Logs(a) => logs(a).await,
        BrokerCommand::User(UserArgs {
            command: UserCommand::Add(a),
        }) => user_add(a),
        BrokerCommand::User(UserArgs {
            command: UserCommand::Remove(a),
        }) => user_remove(a),
    }
}

fn require_certs(out: &Path) -> Result<PathBuf> {
    let certs = crate::pki::certs_dir(out);
    let missing: Vec<&str> = ["ca.crt", "broker.crt", "broker.key"]
        .into_iter()
        .filter(|f| !certs.join(f).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "no broker certificates in {} (missing {}); create them with `mqttkit pki init --out {}`",
            certs.display(),
            missing.join(", "),
            out.display()
        );
    }
    Ok(certs)
}

/// A relative path from `from` (a directory) to `to`, both made absolute.
fn relative_to(to: &Path, from: &Path) -> PathBuf {
    let to = profile::absolute(to);
    let from = profile::absolute(from);
    let to_c: Vec<_> = to.components().collect();
    let from_c: Vec<_> = from.components().collect();
    let common = to_c.iter().zip(&from_c).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from_c.len() {
        rel.push("..");
    }
    for c in &to_c[common..] {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    rel
}

fn compose_path_str(p: &Path) -> String {
    let s = p.display().to_string();
    if s.starts_with('.') || s.starts_with('/') {
        s
    } else {
        format!("./{s}")
    }
}

fn publish(bind: Option<&str>, port: u16) -> String {
    match bind {
        Some(b) if b != "0.0.0.0" && b != "::" => format!("{b}:{port}"),
        _ => port.to_string(),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The runtime to use and, for Docker, the compose tool that runs the file.
fn resolve_runtime(requested: Runtime) -> Result<(Runtime, Option<Compose>)> {
    match requested {
        Runtime::Native => {
            native::mosquitto_binary()?;
            Ok((Runtime::Native, None))
        }
        Runtime::Docker => Ok((Runtime::Docker, Some(docker::Engine::probe().require()?))),
        Runtime::Auto => {
            if let Ok(compose) = docker::Engine::probe().require() {
                Ok((Runtime::Docker, Some(compose)))
            } else if native::mosquitto_binary().is_ok() {
                Ok((Runtime::Native, None))
            } else {
                bail!("no broker runtime: no Docker engine with compose answers and no `mosquitto` binary was found; install mosquitto (Debian/Ubuntu: `apt-get install mosquitto`, macOS: `brew install mosquitto`) or start Docker")
            }
        }
    }
}

/// Connects as the server identity until CONNACK, or fails when the process dies.
async fn wait_healthy(
    out: &Path,
    state: &BrokerState,
    auth: Auth,
    timeout: Duration,
) -> Result<Duration> {
    let deadline = Instant::now() + timeout;
    for attempt in 0u64.. {
        if state.runtime == Runtime::Native && state.pid.is_some_and(native::has_exited) {
            bail!("mosquitto exited during start-up");
        }
        // A container restarts a mosquitto that cannot load the plugin; its log says so.
        if state.runtime == Runtime::Docker
            && attempt % 10 == 9
            && plugin::load_failure(&docker::log_tail(20)).is_some()
        {
            bail!("mosquitto exited during start-up");
        }
        let err = match probe(out, state, auth).await {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("no healthy CONNACK within {timeout:.0?} ({err:#})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop above returns")
}

/// One health check: a real TLS + MQTT CONNECT with the server identity.
async fn probe(out: &Path, state: &BrokerState, auth: Auth) -> Result<Duration> {
    if auth != Auth::Cert {
        // Password auth: a TLS handshake and CONNACK (refused or not) proves it serves.
        let spec = ConnectSpec {
            host: Some("localhost".into()),
            port: Some(state.port),
            cafile: Some(crate::pki::certs_dir(out).join("ca.crt")),
            ..ConnectSpec::bare(out)
        };
        let mut endpoint = spec.resolve(Role::Server)?;
        if auth == Auth::Both {
            let (c, k) = mqtt::identity_in(&crate::pki::certs_dir(out), crate::pki::DEFAULT_SERVER);
            endpoint = endpoint.with_identity(&c, &k)?;
        }
        return match mqtt::probe::connect_once(
            &endpoint,
            &mqtt::unique_client_id("mqttkit-health"),
            Duration::from_secs(3),
        )
        .await
        {
            Ok(d) => Ok(d),
            Err(e) if e.failure.is_connack_refusal() => Ok(Duration::ZERO),
            Err(e) => Err(e.into()),
        };
    }
    let spec = ConnectSpec {
        port: Some(state.port),
        ..ConnectSpec::local(out)
    };
    let mut endpoint = spec.resolve(Role::Server)?;
    if !broker_cert_names(out).contains(&endpoint.host) {
        // Listening on an address the certificate lacks: still prove the broker
        // serves our certificate and accepts our client (`up` warns about the name).
        endpoint = endpoint.verifying_name("localhost")?;
    }
    // An id in the identity's namespace: the binding lets it in even when the
    // profile's server is not a --server-identity of this broker.
    let id = mqtt::client_id::unique_within(&endpoint, "mqttkit-health");
    Ok(mqtt::probe::connect_once(&endpoint, &id, Duration::from_secs(3)).await?)
}

/// DNS names and IP addresses in the broker certificate.
fn broker_cert_names(out: &Path) -> Vec<String> {
    let path = crate::pki::certs_dir(out).join("broker.crt");
    crate::pki::inspect::inspect_file(&path, None)
        .map(|i| {
            i.sans
                .iter()
                .filter_map(|s| s.split_once(':').map(|(_, v)| v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Serialize)]
struct StatusReport {
    running: bool,
    healthy: bool,
    runtime: Option<Runtime>,
    pid: Option<i32>,
    port: Option<u16>,
    websockets_port: Option<u16>,
    connect_ms: Option<f64>,
    error: Option<String>,
    log: Option<PathBuf>,
}

async fn status(args: StatusArgs) -> Result<ExitCode> {
    let out = &args.out.out;
    let state = load_state(out)?;
    let mut report = StatusReport {
        running: false,
        healthy: false,
        runtime: state.as_ref().map(|s| s.runtime),
        pid: state.as_ref().and_then(|s| s.pid),
        port: state.as_ref().map(|s| s.port),
        websockets_port: state.as_ref().and_then(|s| s.websockets_port),
        connect_ms: None,
        error: None,
        log: state.as_ref().map(|s| s.log.clone()),
    };
    match &state {
        None => report.error = Some(format!("no broker was started from {}", out.display())),
        Some(s) => {
            report.running = native::is_running(s);
            if !report.running {
                report.error = Some(match s.runtime {
                    Runtime::Docker => format!("container {} is not running", docker::CONTAINER),
                    _ => "the broker process is not running".into(),
                });
            } else {
                refresh_crl(out, s);
                match probe(out, s, s.auth).await {
                    Ok(d) => {
                        report.healthy = true;
                        report.connect_ms = Some(d.as_secs_f64() * 1000.0);
                    }
                    Err(e) => report.error = Some(format!("{e:#}")),
                }
            }
        }
    }
    if args.json {
        output::print_json(&report)?;
    } else if report.healthy {
        let who = match report.pid {
            Some(p) => format!("pid {p}"),
            None => format!("container {}", docker::CONTAINER),
        };
        output::print_stdout(&format!(
            "running and healthy: {who}, port {}, CONNACK in {:.1} ms\n",
            report.port.unwrap_or_default(),
            report.connect_ms.unwrap_or_default()
        ))?;
    } else {
        output::print_stdout(&format!(
            "{}: {}\n",
            if report.running {
                "running but unhealthy"
            } else {
                "down"
            },
            report.error.as_deref().unwrap_or("unknown")
        ))?;
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn down(args: DownArgs) -> Result<ExitCode> {
    let out = &args.out.out;
    let Some(state) = load_state(out)? else {
        note!(
            "no broker was started from {}; nothing to stop",
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    match state.runtime {
        Runtime::Docker => {
            if let Some(f) = &state.compose_file {
                let compose = match state.compose {
                    Some(c) => c,
                    None => docker::Compose::detect()?,
                };
                compose.down(f)?;
                note!("removed container {}", docker::CONTAINER);
            }
        }
        _ => {
            if native::is_running(&state) {
                native::stop(&state, Duration::from_secs(10));
                note!("stopped mosquitto (pid {})", state.pid.unwrap_or_default());
            } else {
                note!("the broker was not running");
            }
        }
    }
    std::fs::remove_file(state_path(out))
        .with_context(|| format!("removing {}", state_path(out).display()))?;
    Ok(ExitCode::SUCCESS)
}

async fn logs(args: LogsArgs) -> Result<ExitCode> {
    let out = &args.out.out;
    let state = load_state(out)?;
    if state.as_ref().is_some_and(|s| s.runtime == Runtime::Docker) {
        logs::print_container_log(args.tail, args.follow, args.json).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let log = state
        .map(|s| s.log)
        .unwrap_or_else(|| mosquitto_dir(out).join("mosquitto.log"));
    if !log.exists() {
        bail!(
            "no broker log at {}; start the broker with `mqttkit broker up --out {}`",
            log.display(),
            out.display()
        );
    }
    logs::print_log(&log, args.tail, args.follow, args.json).await?;
    Ok(ExitCode::SUCCESS)
}

fn read_password(args: &UserAddArgs) -> Result<String> {
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if output::stdin_is_tty() && output::stderr_is_tty() {
        dialoguer::Password::new()
            .with_prompt(format!("Password for '{}'", args.name))
            .with_confirmation("Repeat it", "the two passwords differ")
            .interact()
            .context("reading the password")?
    } else {
        bail!("no terminal to prompt for the password; pass --password-stdin and pipe it in");
    };
    if password.is_empty() {
        bail!("the password is empty; give a non-empty password");
    }
    Ok(password)
}

fn user_add(args: UserAddArgs) -> Result<ExitCode> {
    crate::pki::validate_identity(&args.name)
        .and_then(|()| passwd::validate_user(&args.name))
        .map_err(|e| anyhow::anyhow!("NAME '{}': {e}", args.name))?;
    let password = read_password(&args)?;
    let path = mosquitto_dir(&args.out.out).join("passwd");
    let existing = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (text, replaced) = passwd::upsert(
        &existing,
        &args.name,
        &passwd::new_entry(&args.name, &password),
    );
    write_passwd(&args.out.out, &path, &text)?;
    note!(
        "{} user '{}' in {}{}",
        if replaced { "updated" } else { "added" },
        args.name,
        path.display(),
        reload_hint(&args.out.out)
    );
    Ok(ExitCode::SUCCESS)
}

fn user_remove(args: UserRemoveArgs) -> Result<ExitCode> {
    let path = mosquitto_dir(&args.out.out).join("passwd");
    let existing =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let Some(text) = passwd::remove(&existing, &args.name) else {
        bail!("no user '{}' in {}", args.name, path.display());
    };
    write_passwd(&args.out.out, &path, &text)?;
    note!(
        "removed user '{}' from {}{}",
        args.name,
        path.display(),
        reload_hint(&args.out.out)
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the password file for the broker's user: the runtime that last
/// ran from `out` says who that is (`mosquitto` natively, uid 1883 in Docker).
fn write_passwd(out: &Path, path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes(), MODE_SECRET)?;
    let runtime = load_state(out)
        .ok()
        .flatten()
        .map_or(Runtime::Native, |s| s.runtime);
    if let Some(user) = native::privilege_drop_user(runtime) {
        native::grant(&user, path)?;
    }
    Ok(())
}

/// After `pki revoke NAME`: a running broker re-reads the CRL (SIGHUP, in
/// Docker sent to the container; mosquitto re-reads it on listeners with
/// `crlfile` and `require_certificate`, which `up` renders), so NAME can no
/// longer connect; then NAME's live connections under mqttkit's client ids
/// (`NAME`, `NAME-sub-commands`) are ended by taking those ids over with the
/// server identity, which the client-id binding (plugin.rs) lets use any id.
/// A connection under another id lasts until it reconnects (mosquitto checks
/// certificates only at the handshake).
pub async fn enforce_revocation(out: &Path, name: &str) -> Result<()> {
    let Some(state) = load_state(out)?.filter(native::is_running) else {
        return Ok(());
    };
    let conf =
        std::fs::read_to_string(mosquitto_dir(out).join("mosquitto.conf")).unwrap_or_default();
    if !conf.lines().any(|l| l.starts_with("crlfile ")) {
        note!("the running broker was started before any revocation and has no CRL; enforce it with `mqttkit broker down && mqttkit broker up`");
        return Ok(());
    }
    if !reload(&state) {
        note!("could not signal the running broker; enforce the CRL with `mqttkit broker down && mqttkit broker up`");
        return Ok(());
    }
    // mosquitto re-reads the CRL in its next loop round.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = crate::mqtt::ConnectSpec::local(out).resolve(crate::mqtt::Role::Server)?;
    let ids = [name.to_string(), format!("{name}-sub-commands")];
    for id in &ids {
        if let Err(e) = crate::mqtt::probe::connect_once(&server, id, Duration::from_secs(5)).await
        {
            note!("warning: could not end the sessions of '{name}' ({e})");
            return Ok(());
        }
    }
    note!(
        "the running broker re-read the CRL: '{name}' can no longer connect, and its connections as {} were ended",
        ids.join(" and ")
    );
    Ok(())
}

/// `broker status` on a running broker: a CRL near its nextUpdate is
/// re-signed (or warned about with the date) and the broker re-reads it, so
/// a long-running broker never reaches the date that locks every client out.
fn refresh_crl(out: &Path, state: &BrokerState) {
    if crate::pki::revoke::refresh_crl_if_due(&crate::identity::certs_dir(out)) {
        reload(state);
    }
}

/// SIGHUP to the running broker (in Docker, to the container's mosquitto):
/// it re-reads its configuration, password file and CRL. False if it could
/// not be signalled.
fn reload(state: &BrokerState) -> bool {
    match state.runtime {
        Runtime::Docker => docker::reload(),
        _ => native::reload(state),
    }
}

/// A running broker re-reads its password file on SIGHUP (in Docker, sent
/// to the container).
fn reload_hint(out: &Path) -> String {
    match load_state(out).ok().flatten() {
        Some(s) if native::is_running(&s) && reload(&s) => {
            "; the running broker reloaded it".into()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/out/certs"), Path::new("/a/out/mosquitto")),
            PathBuf::from("../certs")
        );
        assert_eq!(
            relative_to(Path::new("/a/out/mosquitto"), Path::new("/a")),
            PathBuf::from("out/mosquitto")
        );
        assert_eq!(
            compose_path_str(Path::new("out/mosquitto")),
            "./out/mosquitto"
        );
    }
}
