//! Running the native mosquitto binary in the background (docker.rs has the
//! Docker runtime), and the checks both runtimes share (ports, users).

use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use super::{BrokerState, Runtime};

/// Where Debian and Homebrew put mosquitto when it is not on PATH (sbin).
const MOSQUITTO_CANDIDATES: &[&str] = &[
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
];

pub fn mosquitto_binary() -> Result<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("mosquitto");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    for c in MOSQUITTO_CANDIDATES {
        if Path::new(c).is_file() {
            return Ok(PathBuf::from(c));
        }
    }
    bail!("--runtime native: no `mosquitto` binary found; install it (Debian/Ubuntu: `apt-get install mosquitto`, macOS: `brew install mosquitto`)")
}

pub fn check_port_free(bind: Option<&str>, port: u16) -> Result<()> {
    let ip: IpAddr = match bind {
        Some(b) => b.parse().map_err(|_| {
            anyhow::anyhow!("--bind '{b}' is not an IP address; use e.g. 127.0.0.1 or 0.0.0.0")
        })?,
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    match TcpListener::bind(SocketAddr::new(ip, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port {port} is already in use by another process; choose another --port or stop that process"
        ),
        Err(e) => bail!("cannot listen on {ip}:{port}: {e}; choose another --port or --bind"),
    }
}

/// The user mosquitto will drop to, when we start it as root.
pub fn privilege_drop_user(runtime: Runtime) -> Option<User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    match runtime {
        Runtime::Docker => Some(super::docker::image_user()),
        _ => User::from_name("mosquitto").ok().flatten(),
    }
}

/// Hands one file or directory to the broker's user (mode unchanged: keys stay 0600).
pub fn grant(user: &User, path: &Path) -> Result<()> {
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).with_context(|| {
        format!(
            "giving {} to user {} so the broker can read it",
            path.display(),
            user.name
        )
    })
}

/// Starts mosquitto in `dir` (its working directory: the config's paths are
/// relative to it), detached in its own process group, logging to `log`.
pub fn spawn(dir: &Path, log: &Path) -> Result<i32> {
    let bin = mosquitto_binary()?;
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err_file = log_file.try_clone()?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg("mosquitto.conf")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        // Its own process group: Ctrl-C in the terminal that ran `up` does not stop it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id() as i32;
    // Reap it in the background if it exits while we still run (no zombie for is_running).
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    std::fs::write(dir.join("mosquitto.pid"), format!("{pid}\n"))
        .with_context(|| format!("writing {}", dir.join("mosquitto.pid").display()))?;
    Ok(pid)
}

/// Is the process `up` started still alive, and still mosquitto with our config?
pub fn is_running(state: &BrokerState) -> bool {
    match state.runtime {
        Runtime::Docker => super::docker::container_running(),
        _ => state
            .pid
            .is_some_and(|pid| is_our_mosquitto(pid, &state.conf)),
    }
}

/// What the PID checks need to know of a live process, read through
/// sysinfo (`/proc` on Linux, libproc on macOS) so they work on both.
struct ProcessInfo {
    argv0: Option<std::ffi::OsString>,
    name: std::ffi::OsString,
    zombie: bool,
    cwd: Option<PathBuf>,
}

/// `None` when no process has this PID (or it cannot be read at all).
fn process_info(pid: i32, with_cwd: bool) -> Option<ProcessInfo> {
    use sysinfo::{ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};
    let spid = sysinfo::Pid::from_u32(u32::try_from(pid).ok()?);
    let mut refresh = ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always);
    if with_cwd {
        refresh = refresh.with_cwd(UpdateKind::Always);
    }
    let mut sys = System::new();
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[spid]), true, refresh);
    let p = sys.process(spid)?;
    Some(ProcessInfo {
        argv0: p.cmd().first().cloned(),
        name: p.name().to_os_string(),
        zombie: p.status() == ProcessStatus::Zombie,
        cwd: p.cwd().map(Path::to_path_buf),
    })
}

/// Whether the process we just spawned has ended (gone or a zombie). Unlike
/// [`is_running`] it does not look at the command line or working directory,
/// which can be briefly unreadable while mosquitto drops to its own user.
pub fn has_exited(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    process_info(pid, false).is_some_and(|p| p.zombie)
}

fn is_our_mosquitto(pid: i32, conf: &Path) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // Guard against PID reuse: the process must be mosquitto started in our directory.
    let Some(p) = process_info(pid, true) else {
        return false;
    };
    let is_mosquitto = match &p.argv0 {
        Some(argv0) => argv0.as_encoded_bytes().ends_with(b"mosquitto"),
        None => p.name == "mosquitto",
    };
    let same_dir = match (p.cwd, conf.parent()) {
        (Some(cwd), Some(dir)) => std::fs::canonicalize(dir)
            .map(|d| d == cwd)
            .unwrap_or(false),
        _ => false,
    };
    is_mosquitto && !p.zombie && same_dir
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn stop(state: &BrokerState, grace: Duration) {
    let Some(pid) = state.pid else { return };
    if !is_our_mosquitto(pid, &state.conf) {
        return;
    }
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_our_mosquitto(pid.as_raw(), &state.conf) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
}

/// Asks a running native broker to reload its configuration and password file.
pub fn reload(state: &BrokerState) -> bool {
    state.runtime == Runtime::Native
        && state
            .pid
            .is_some_and(|pid| kill(Pid::from_raw(pid), Signal::SIGHUP).is_ok())
}

pub fn log_tail(state: &BrokerState, lines: usize) -> String {
    if state.runtime == Runtime::Docker {
        return super::docker::log_tail(lines);
    }
    let text = std::fs::read_to_string(&state.log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
