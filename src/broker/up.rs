//! `broker up`: validate the request, render the files, start mosquitto,
//! wait until a real TLS + MQTT CONNECT succeeds, report. Each step is one
//! function; [`UpConfig`] is the resolved request, so `quickstart` calls the
//! same code without building clap structs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::render::AclTree;
use super::{
    broker_cert_names, compose_path_str, load_state, mosquitto_dir, now_rfc3339, publish,
    relative_to, render, require_certs, state_path, wait_healthy, Auth, BrokerState, Compose,
    Durability, Runtime, UpArgs, COMPOSE_MARKER, MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES,
};
use super::{docker, native, plugin};
use crate::fsutil::{write_atomic, StagedFiles, MODE_PUBLIC};
use crate::mqtt::{self, profile};
use crate::schema::{Schema, SchemaSource};
use crate::{note, output};

/// The default MQTT over TLS port.
pub const DEFAULT_PORT: u16 = 8883;
/// How long `up` waits for the broker to accept a connection by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// What `broker up` is asked to do, resolved from flags or built by a caller.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub out: PathBuf,
    pub port: u16,
    pub bind: Option<String>,
    pub runtime: Runtime,
    pub compose_file: PathBuf,
    /// The image compose.yaml runs (Docker runtime).
    pub image: String,
    pub websockets_port: Option<u16>,
    pub auth: Auth,
    pub durability: Durability,
    /// A schema whose topic map the ACL follows.
    pub schema: Option<PathBuf>,
    pub server_identities: Vec<String>,
    /// Load the plugin that binds client ids to identities (plugin.rs).
    pub bind_client_ids: bool,
    pub timeout: Duration,
    pub json: bool,
}

impl UpConfig {
    /// The defaults of `broker up` for output root `out`.
    pub fn new(out: &Path) -> Self {
        UpConfig {
            out: out.to_path_buf(),
            port: DEFAULT_PORT,
            bind: None,
            runtime: Runtime::default(),
            compose_file: PathBuf::from("compose.yaml"),
            image: super::DEFAULT_IMAGE.to_string(),
            websockets_port: None,
            auth: Auth::default(),
            durability: Durability::default(),
            schema: None,
            server_identities: vec![crate::identity::DEFAULT_SERVER.to_string()],
            bind_client_ids: true,
            timeout: DEFAULT_TIMEOUT,
            json: false,
        }
    }
}

impl UpArgs {
    pub fn config(&self) -> UpConfig {
        UpConfig {
            out: self.out.out.clone(),
            port: self.port,
            bind: self.bind.clone(),
            runtime: self.runtime,
            compose_file: self.compose_file.clone(),
            image: self.image.clone(),
            websockets_port: self.websockets_port,
            auth: self.auth,
            durability: self.durability,
            schema: self.schema.clone(),
            server_identities: self.server_identities.clone(),
            bind_client_ids: !self.allow_any_client_id,
            timeout: self.timeout,
            json: self.json,
        }
    }
}

/// Decisions made before anything is written.
struct Plan<'a> {
    certs: PathBuf,
    dir: PathBuf,
    runtime: Runtime,
    /// Docker: the compose tool that runs the file.
    compose: Option<Compose>,
    /// None when `--runtime native` leaves a foreign compose file alone.
    compose_file: Option<&'a Path>,
    password_file: bool,
    /// As root, mosquitto drops to this user, which must read the key and data.
    drop_to: Option<nix::unistd::User>,
    acl: AclTree,
}

/// Renders the configuration, starts the broker and waits until it is healthy.
pub async fn up(cfg: &UpConfig) -> Result<ExitCode> {
    let certs = validate(cfg)?;
    if let Some(code) = already_running(cfg)? {
        return Ok(code);
    }
    let plan = plan(cfg, certs)?;
    render_files(cfg, &plan)?;
    let started = Instant::now();
    let state = start(cfg, &plan)?;
    let host = client_host(cfg.bind.as_deref());
    let profile_path = profile::write_local(&cfg.out, &host, cfg.port)?;
    warn_missing_name(&cfg.out, &host);
    wait(cfg, &state).await?;
    let report = UpReport {
        runtime: plan.runtime,
        pid: state.pid,
        container: plan.compose.map(|_| docker::CONTAINER),
        compose_command: plan.compose.map(Compose::name),
        port: cfg.port,
        websockets_url: cfg
            .websockets_port
            .map(|ws| format!("wss://{host}:{ws}/mqtt")),
        auth: cfg.auth.as_str(),
        durability: cfg.durability,
        client_id_binding: cfg.bind_client_ids,
        healthy_after_ms: started.elapsed().as_millis(),
        config: plan.dir.join("mosquitto.conf"),
        compose: plan.compose_file.map(Path::to_path_buf),
        log: plan.dir.join("mosquitto.log"),
        profile: profile_path,
    };
    if cfg.json {
        output::print_json(&report)?;
    } else {
        output::print_stdout(&report.human())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the request itself; returns the certificates directory.
fn validate(cfg: &UpConfig) -> Result<PathBuf> {
    let certs = require_certs(&cfg.out)?;
    for s in &cfg.server_identities {
        crate::pki::validate_identity(s)
            .map_err(|e| anyhow::anyhow!("--server-identity '{s}': {e}"))?;
    }
    plugin::options(cfg.auth == Auth::Cert, &cfg.server_identities)?;
    if cfg.websockets_port == Some(cfg.port) {
        bail!("--websockets-port must differ from --port ({})", cfg.port);
    }
    docker::validate_image(&cfg.image)?;
    Ok(certs)
}

/// `up` again on the same port is a no-op; another port is an error.
fn already_running(cfg: &UpConfig) -> Result<Option<ExitCode>> {
    let out = &cfg.out;
    let Some(state) = load_state(out)?.filter(native::is_running) else {
        return Ok(None);
    };
    if state.port != cfg.port {
        bail!(
            "a broker from {} is already running on port {}; stop it first with `mqttkit broker down --out {}`",
            mosquitto_dir(out).display(),
            state.port,
            out.display()
        );
    }
    note!(
        "broker already running ({}, port {}); nothing to do",
        state
            .pid
            .map_or(format!("container {}", docker::CONTAINER), |p| format!(
                "pid {p}"
            )),
        state.port
    );
    profile::write_local(out, "localhost", state.port)?;
    if cfg.json {
        output::print_json(&serde_json::json!({
            "already_running": true,
            "runtime": state.runtime,
            "pid": state.pid,
            "port": state.port,
        }))?;
    }
    Ok(Some(ExitCode::SUCCESS))
}

/// The runtime, the files to write and who must read them; fails before
/// anything is written when users or ports are missing.
fn plan(cfg: &UpConfig, certs: PathBuf) -> Result<Plan<'_>> {
    let (runtime, compose) = super::resolve_runtime(cfg.runtime)?;
    let compose_file = compose_target(&cfg.compose_file, runtime, &cfg.out)?;
    let dir = mosquitto_dir(&cfg.out);
    let password_file = cfg.auth != Auth::Cert;
    if password_file && !dir.join("passwd").exists() {
        bail!(
            "--auth {} needs users; add one with `mqttkit broker user add NAME --out {}`",
            cfg.auth.as_str(),
            cfg.out.display()
        );
    }
    let acl = acl_tree(cfg)?;
    for port in std::iter::once(cfg.port).chain(cfg.websockets_port) {
        native::check_port_free(cfg.bind.as_deref(), port)?;
    }
    Ok(Plan {
        acl,
        certs,
        dir,
        runtime,
        compose,
        compose_file,
        password_file,
        drop_to: native::privilege_drop_user(runtime),
    })
}

/// The topics the ACL grants: the schema's map, or mqttkit's own tree.
fn acl_tree(cfg: &UpConfig) -> Result<AclTree> {
    let Some(path) = &cfg.schema else {
        return Ok(AclTree::builtin());
    };
    let schema = Schema::load(&SchemaSource {
        schema: Some(path.clone()),
        ..Default::default()
    })?;
    AclTree::from_schema(&schema).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes mosquitto.conf, the ACL and the compose file as one set, then
/// gives the broker's user exactly the files it needs.
fn render_files(cfg: &UpConfig, plan: &Plan<'_>) -> Result<()> {
    let dir = &plan.dir;
    if cfg.bind_client_ids {
        plugin::check_reads(&plan.acl.device_read, &plan.acl.server_read)?;
    }
    crate::pki::revoke::refresh_crl_if_due(&plan.certs);
    // In a container mosquitto listens on all of the container's addresses
    // (docker publishes the ports on --bind) and already runs as its user.
    let native = plan.runtime == Runtime::Native;
    let (plugin_identity, plugin_servers) =
        plugin::options(cfg.auth == Auth::Cert, &cfg.server_identities)?;
    let conf = render::mosquitto_conf(&render::ConfVars {
        port: cfg.port,
        bind: cfg.bind.as_deref().filter(|_| native),
        websockets_port: cfg.websockets_port,
        user: plan
            .drop_to
            .as_ref()
            .filter(|_| native)
            .map(|u| u.name.as_str()),
        auth: cfg.auth.as_str(),
        password_file: plan.password_file,
        certs: &relative_to(&plan.certs, dir).display().to_string(),
        crl: plan.certs.join("crl.pem").exists(),
        max_queued_messages: MAX_QUEUED_MESSAGES,
        queue_mib: MAX_QUEUED_MESSAGES * 200 / (1024 * 1024),
        max_inflight_messages: MAX_INFLIGHT_MESSAGES,
        autosave_on_changes: cfg.durability.autosave().0,
        autosave_interval: cfg.durability.autosave().1,
        bind_client_ids: cfg.bind_client_ids,
        plugin_file: plugin::FILE,
        plugin_identity: &plugin_identity,
        plugin_servers: &plugin_servers,
        plugin_device_read: &plan.acl.device_read,
        plugin_server_read: &plan.acl.server_read,
    })?;
    let mut files = StagedFiles::new();
    files.add(dir.join("mosquitto.conf"), conf, MODE_PUBLIC);
    if cfg.bind_client_ids {
        files.add(dir.join(plugin::FILE), plugin::LIBRARY, MODE_PUBLIC);
    }
    files.add(
        dir.join("acl"),
        render::acl(
            &cfg.server_identities,
            &plan.acl,
            cfg.schema
                .as_deref()
                .map(|p| p.to_str().unwrap_or("(schema)")),
        )?,
        MODE_PUBLIC,
    );
    if let Some(path) = plan.compose_file {
        files.add(path, render_compose(cfg, plan)?, MODE_PUBLIC);
    }
    files.commit(true)?;
    crate::fsutil::create_dir_all(&dir.join("data"))?;
    if let Some(user) = &plan.drop_to {
        native::grant(user, &plan.certs.join("broker.key"))?;
        native::grant(user, &dir.join("data"))?;
        if plan.password_file {
            native::grant(user, &dir.join("passwd"))?;
        }
    }
    Ok(())
}

fn render_compose(cfg: &UpConfig, plan: &Plan<'_>) -> Result<String> {
    let compose_dir = match cfg.compose_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let bind = cfg.bind.as_deref();
    render::compose(&render::ComposeVars {
        container_name: docker::CONTAINER,
        image: &cfg.image,
        user: &docker::container_user(),
        port: cfg.port,
        publish_port: publish(bind, cfg.port),
        websockets_port: cfg.websockets_port,
        publish_websockets_port: cfg
            .websockets_port
            .map(|p| publish(bind, p))
            .unwrap_or_default(),
        mosquitto_dir: &compose_path_str(&relative_to(&plan.dir, &compose_dir)),
        certs_dir: &compose_path_str(&relative_to(&plan.certs, &compose_dir)),
    })
}

/// Starts mosquitto (or the container) and records what was started.
fn start(cfg: &UpConfig, plan: &Plan<'_>) -> Result<BrokerState> {
    let log = plan.dir.join("mosquitto.log");
    let mut state = BrokerState {
        runtime: plan.runtime,
        port: cfg.port,
        websockets_port: cfg.websockets_port,
        auth: cfg.auth,
        pid: None,
        conf: profile::absolute(&plan.dir.join("mosquitto.conf")),
        compose_file: plan.compose_file.map(profile::absolute),
        compose: plan.compose,
        log: profile::absolute(&log),
        started_at: now_rfc3339(),
    };
    match plan.runtime {
        Runtime::Native => state.pid = Some(native::spawn(&plan.dir, &log)?),
        Runtime::Docker => {
            let compose = plan.compose.expect("resolved with the runtime");
            compose.up(&cfg.compose_file)?
        }
        Runtime::Auto => unreachable!("resolved by plan()"),
    }
    write_atomic(
        &state_path(&cfg.out),
        serde_json::to_string_pretty(&state)?.as_bytes(),
        MODE_PUBLIC,
    )?;
    Ok(state)
}

/// The host clients use: the bind address, or localhost for a wildcard.
fn client_host(bind: Option<&str>) -> String {
    match bind {
        None | Some("0.0.0.0") | Some("::") => "localhost".to_string(),
        Some(b) => b.to_string(),
    }
}

fn warn_missing_name(out: &Path, host: &str) {
    let names = broker_cert_names(out);
    if !names.iter().any(|n| n == host) {
        note!(
            "warning: the broker certificate does not carry '{host}', so clients connecting by it will fail to verify the broker; reissue only the broker certificate with `{}` and restart the broker",
            mqtt::failure::reissue_broker(&names, Some(host))
        );
    }
}

/// Waits until the broker is healthy; otherwise stops what was started and
/// fails with the log's last lines.
async fn wait(cfg: &UpConfig, state: &BrokerState) -> Result<()> {
    let spinner = output::spinner(format!("waiting for mosquitto on port {}", cfg.port));
    let health = wait_healthy(&cfg.out, state, cfg.auth, cfg.timeout).await;
    spinner.finish_and_clear();
    let Err(e) = health else { return Ok(()) };
    let tail = native::log_tail(state, 15);
    match (state.runtime, state.compose, &state.compose_file) {
        (Runtime::Docker, Some(compose), Some(file)) => {
            let _ = compose.down(file);
        }
        _ => native::stop(state, Duration::from_secs(5)),
    }
    let _ = std::fs::remove_file(state_path(&cfg.out));
    if let Some(why) = plugin::load_failure(&tail).filter(|_| cfg.bind_client_ids) {
        return Err(plugin::load_error(&why));
    }
    bail!(
        "the broker did not become healthy: {e:#}\n--- {} (last lines) ---\n{tail}",
        match state.runtime {
            Runtime::Docker => format!("docker logs {}", docker::CONTAINER),
            _ => state.log.display().to_string(),
        }
    );
}

/// The compose file `up` writes, if any. It is the user's top-level file, so
/// only one we rendered is replaced; a foreign one matters only to docker
/// (native leaves it alone and writes none).
fn compose_target<'a>(path: &'a Path, runtime: Runtime, out: &Path) -> Result<Option<&'a Path>> {
    let foreign =
        std::fs::read_to_string(path).is_ok_and(|existing| !existing.contains(COMPOSE_MARKER));
    match (foreign, runtime) {
        (false, _) => Ok(Some(path)),
        (true, Runtime::Native) => Ok(None),
        (true, _) => bail!(
            "--compose-file {} exists and was not written by mqttkit; pass another --compose-file (e.g. {}/compose.yaml) or move it away",
            path.display(),
            out.display()
        ),
    }
}

/// What `broker up` started, for people (lines) and scripts (`--json`).
#[derive(Debug, Serialize)]
struct UpReport {
    runtime: Runtime,
    pid: Option<i32>,
    /// Docker: the container and the compose command that started it.
    container: Option<&'static str>,
    compose_command: Option<&'static str>,
    port: u16,
    websockets_url: Option<String>,
    auth: &'static str,
    durability: Durability,
    /// Client ids are bound to identities (plugin.rs).
    client_id_binding: bool,
    healthy_after_ms: u128,
    config: PathBuf,
    /// None when `--runtime native` left a foreign compose file alone.
    compose: Option<PathBuf>,
    log: PathBuf,
    profile: PathBuf,
}

impl UpReport {
    fn human(&self) -> String {
        let what = match (self.container, self.compose_command, self.pid) {
            (Some(c), Some(cmd), _) => format!("docker runtime via {cmd}, container {c}"),
            (_, _, Some(pid)) => format!("native runtime, pid {pid}"),
            _ => "native runtime".into(),
        };
        let mut s = format!(
            "mosquitto is up ({what}) on port {} with {}, healthy after {:.1?}\n",
            self.port,
            match self.auth {
                "password" => "TLS and passwords (password auth; no client certificate required)",
                "both" => "mutual TLS and passwords (both auth)",
                _ => "mutual TLS (cert auth)",
            },
            Duration::from_millis(self.healthy_after_ms as u64)
        );
        if let Some(url) = &self.websockets_url {
            s.push_str(&format!("  websockets  {url}\n"));
        }
        s.push_str(&format!(
            "  durability  {} ({})\n",
            self.durability.as_str(),
            self.durability.loss_window()
        ));
        s.push_str(if self.client_id_binding {
            "  client ids  bound: NAME or NAME-* for identity NAME, any for server identities\n"
        } else {
            "  client ids  unbound (--allow-any-client-id): any identity may use any client id\n"
        });
        s.push_str(&format!("  config      {}\n", self.config.display()));
        if let Some(compose) = &self.compose {
            s.push_str(&format!("  compose     {}\n", compose.display()));
        }
        let log = match self.container {
            Some(c) => format!("`mqttkit broker logs` (docker logs {c})"),
            None => self.log.display().to_string(),
        };
        s.push_str(&format!(
            "  log         {log}\n  profile     {} (use --profile local)\n",
            self.profile.display()
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_compose_file_matters_only_to_docker() {
        let dir = tempfile::tempdir().unwrap();
        let (out, path) = (dir.path(), dir.path().join("compose.yaml"));
        assert_eq!(
            compose_target(&path, Runtime::Docker, out).unwrap(),
            Some(path.as_path())
        );
        std::fs::write(&path, format!("# {COMPOSE_MARKER}\n")).unwrap();
        assert_eq!(
            compose_target(&path, Runtime::Native, out).unwrap(),
            Some(path.as_path())
        );
        std::fs::write(&path, "services: {}\n").unwrap();
        assert_eq!(compose_target(&path, Runtime::Native, out).unwrap(), None);
        let err = compose_target(&path, Runtime::Docker, out).unwrap_err();
        assert!(format!("{err}").starts_with("--compose-file "), "{err}");
    }
}
