//! The Docker runtime: the rendered compose.yaml run by `docker compose` (the
//! v2 plugin) or, where only that exists, `docker-compose` (v1, still what
//! many distributions ship). The tool `up` used is recorded in state.json so
//! `down` acts with the same one. Engine checks, status and logs go through
//! the `docker` CLI, which every Docker installation has.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{Gid, Uid, User};
use serde::{Deserialize, Serialize};

/// The container `up` starts (compose.yaml's `container_name`).
pub const CONTAINER: &str = "mqttkit-mosquitto";
/// The image `broker up --runtime docker` runs unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = "eclipse-mosquitto:2";
/// The eclipse-mosquitto image's user; as root, `up` hands it the key and data.
pub const IMAGE_UID: u32 = 1883;
/// Forces one compose tool (`v1` or `v2`) instead of preferring v2.
pub const COMPOSE_ENV: &str = "MQTTKIT_COMPOSE";

/// Which compose implementation runs the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compose {
    /// `docker compose` (the CLI plugin).
    V2,
    /// `docker-compose` (the Python program).
    V1,
}

impl Compose {
    fn command(self) -> Command {
        match self {
            Compose::V2 => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
            Compose::V1 => Command::new("docker-compose"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compose::V2 => "docker compose",
            Compose::V1 => "docker-compose",
        }
    }

    fn installed(self) -> bool {
        self.command()
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// v2 when the plugin answers, else v1; `MQTTKIT_COMPOSE=v1|v2` forces one.
    pub fn detect() -> Result<Compose> {
        let forced = std::env::var(COMPOSE_ENV).ok();
        let candidates: &[Compose] = match forced.as_deref() {
            None | Some("") => &[Compose::V2, Compose::V1],
            Some("v2") => &[Compose::V2],
            Some("v1") => &[Compose::V1],
            Some(other) => bail!("{COMPOSE_ENV}={other}: not a compose version; use v1 (docker-compose) or v2 (docker compose), or unset it"),
        };
        candidates.iter().copied().find(|c| c.installed()).ok_or_else(|| {
            anyhow!(
                "--runtime docker: the Docker engine answers but {} installed; install the compose plugin or Compose v1 (Debian: `apt-get install docker-compose`), or use --runtime native",
                match forced.as_deref() {
                    Some("v2") => "`docker compose` (v2 plugin, forced by MQTTKIT_COMPOSE=v2) is not",
                    Some("v1") => "`docker-compose` (v1, forced by MQTTKIT_COMPOSE=v1) is not",
                    _ => "neither `docker compose` (v2 plugin) nor `docker-compose` (v1) is",
                }
            )
        })
    }

    /// `COMPOSE -f FILE ARGS...`, its output on our stderr (stdout is for
    /// data: `up --json`); fails naming the command.
    fn run(self, file: &Path, args: &[&str]) -> Result<()> {
        let shown = format!("{} -f {} {}", self.name(), file.display(), args.join(" "));
        let status = self
            .command()
            .arg("-f")
            .arg(file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .with_context(|| format!("running `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status}); its output is above");
        }
        Ok(())
    }

    pub fn up(self, file: &Path) -> Result<()> {
        self.run(file, &["up", "-d"])
    }

    pub fn down(self, file: &Path) -> Result<()> {
        self.run(file, &["down"])
    }
}

/// Why the Docker runtime cannot be used, when it cannot.
#[derive(Debug)]
pub enum Engine {
    Answers,
    /// No `docker` command on PATH.
    NoCli,
    /// `docker info` failed or timed out; its first error line.
    NoAnswer(String),
}

impl Engine {
    /// Asks the engine (`docker info`, bounded to 5 s).
    pub fn probe() -> Engine {
        let child = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Engine::NoCli,
            Err(e) => Engine::NoAnswer(e.to_string()),
            Ok(child) => wait_info(child),
        }
    }

    /// The one-line error for `--runtime docker`, or the compose tool to use.
    pub fn require(self) -> Result<Compose> {
        match self {
            Engine::Answers => Compose::detect(),
            Engine::NoCli => bail!("--runtime docker: no `docker` command found; install Docker (Debian: `apt-get install docker.io docker-compose`) or use --runtime native"),
            Engine::NoAnswer(why) => bail!("--runtime docker: the Docker engine does not answer (`docker info`: {why}); start it (`systemctl start docker`, or `dockerd`) or use --runtime native"),
        }
    }
}

fn wait_info(mut child: Child) -> Engine {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Engine::Answers,
            Ok(Some(_)) => {
                let mut err = String::new();
                if let Some(e) = child.stderr.take() {
                    let _ = BufReader::new(e).read_line(&mut err);
                }
                return Engine::NoAnswer(err.trim().to_string());
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Engine::NoAnswer("no answer within 5 s".into());
            }
        }
    }
}

/// Checks an `--image` reference before it goes into compose.yaml.
pub fn validate_image(image: &str) -> Result<()> {
    let ok = !image.is_empty()
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !image.starts_with(['-', ':', '/']);
    if !ok {
        bail!("--image '{image}': not an image reference (letters, digits and . _ - / : @ only); pass e.g. --image {DEFAULT_IMAGE}");
    }
    Ok(())
}

/// The container's `user:`. As root, the image's uid 1883, which `up` gives
/// the key and data dir. Otherwise `up` cannot chown, so the container runs
/// as the caller, who owns the 0600 key (Docker Desktop maps bind-mount
/// ownership to whichever user the container runs as, so this works there).
pub fn container_user() -> String {
    if nix::unistd::geteuid().is_root() {
        format!("{IMAGE_UID}:{IMAGE_UID}")
    } else {
        format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
    }
}

/// The user `up` hands the key and data to (root only; see [`container_user`]).
pub fn image_user() -> User {
    User {
        name: format!("uid {IMAGE_UID}"),
        passwd: Default::default(),
        uid: Uid::from_raw(IMAGE_UID),
        gid: Gid::from_raw(IMAGE_UID),
        gecos: Default::default(),
        dir: Default::default(),
        shell: Default::default(),
    }
}

pub fn container_running() -> bool {
    Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", CONTAINER])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true")
        .unwrap_or(false)
}

/// SIGHUP to the container's mosquitto: it re-reads its password file.
pub fn reload() -> bool {
    Command::new("docker")
        .args(["kill", "--signal", "HUP", CONTAINER])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One `docker logs --timestamps` line: docker's time and mosquitto's line.
#[derive(Debug, PartialEq)]
pub struct Stamped {
    pub time: Option<time::OffsetDateTime>,
    pub line: String,
}

impl Stamped {
    pub fn parse(raw: &str) -> Stamped {
        let (ts, line) = raw.split_once(' ').unwrap_or(("", raw));
        match time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339) {
            Ok(t) => Stamped {
                time: Some(t),
                line: line.to_string(),
            },
            Err(_) => Stamped {
                time: None,
                line: raw.to_string(),
            },
        }
    }
}

fn logs_command(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(["logs", "--timestamps"])
        .args(args)
        .arg(CONTAINER)
        .stdin(Stdio::null());
    c
}

/// The container's log so far (`docker logs ARGS`): mosquitto logs to
/// stderr, anything else to stdout; both merged in time order.
pub fn read_logs(args: &[&str]) -> Result<Vec<Stamped>> {
    let o = logs_command(args)
        .output()
        .context("running `docker logs`")?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        bail!(
            "`docker logs {CONTAINER}` failed ({}: {}); is the broker up? (`mqttkit broker status`)",
            o.status,
            err.lines().next().unwrap_or("").trim()
        );
    }
    let mut lines: Vec<Stamped> = [&o.stdout, &o.stderr]
        .iter()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(Stamped::parse)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort_by_key(|l| l.time);
    Ok(lines)
}

/// `docker logs --follow ARGS`: lines of both streams as they come, until
/// the container stops or the child is killed.
pub fn follow_logs(
    args: &[&str],
) -> Result<(Child, tokio::sync::mpsc::UnboundedReceiver<Stamped>)> {
    let mut child = logs_command(&[&["--follow"], args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `docker logs --follow`")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let streams: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped")),
        Box::new(child.stderr.take().expect("piped")),
    ];
    for stream in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for raw in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(Stamped::parse(&raw)).is_err() {
                    break;
                }
            }
        });
    }
    Ok((child, rx))
}

/// The container's last `lines` log lines.
pub fn log_tail(lines: usize) -> String {
    read_logs(&["--tail", &lines.to_string()])
        .map(|l| {
            l.iter()
                .map(|s| s.line.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for good in [
            "eclipse-mosquitto:2",
            "registry.local:5000/mirror/mosquitto:2.0.18",
            "mqttkit-test/mosquitto:local",
            "eclipse-mosquitto@sha256:abc123",
        ] {
            validate_image(good).unwrap();
        }
        for bad in ["", "a b", "x\"y", "-rm", "img\nports: []"] {
            let e = validate_image(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--image '{bad}'")), "{e}");
        }
    }

    #[test]
    fn docker_log_timestamps_split_off() {
        let s = Stamped::parse(
            "2026-12-02T01:09:31.4987337Z 2026-12-02T01:09:31: mosquitto version 2.0.11 running",
        );
        assert_eq!(
            s.line,
            "2026-12-02T01:09:31: mosquitto version 2.0.11 running"
        );
        assert_eq!(s.time.unwrap().nanosecond(), 498_733_700);
        assert_eq!(Stamped::parse("no time").time, None);
    }
}
