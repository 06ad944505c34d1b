//! A Docker engine and a registry-free mosquitto image for tests/docker.rs.
//!
//! The machine's engine is used when `docker info` answers; otherwise a
//! `dockerd` of our own starts with its data-root, exec-root, pidfile and
//! socket in a temp dir (reached through DOCKER_HOST, without iptables rules)
//! and is stopped on drop. No registry is reachable, so the image is made
//! from the host: Debian's `/usr/sbin/mosquitto`, the libraries `ldd` lists
//! and the loader, a passwd/group with `mosquitto` as uid 1883 and the
//! eclipse-mosquitto paths, imported as one `FROM scratch` layer
//! (`docker import`: no Dockerfile builder or BuildKit needed).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The test image's tag.
pub const IMAGE: &str = "mqttkit-test/mosquitto:local";
/// The container `broker up` names (src/broker/docker.rs).
pub const CONTAINER: &str = "mqttkit-mosquitto";

pub struct Engine {
    /// DOCKER_HOST for every docker and mqttkit command; None: the default engine.
    pub host: Option<String>,
    daemon: Option<Child>,
    root: Option<tempfile::TempDir>,
    /// Our dockerd made the docker0 bridge (none was there): removed on drop.
    made_bridge: bool,
    /// Held while the engine is ours: docker tests share a container name.
    _lock: std::fs::File,
}

/// A line that nextest and cargo test both show, saying why nothing ran.
fn skip(why: &str) -> Option<Engine> {
    eprintln!("SKIPPED (docker tests): {why}");
    None
}

impl Engine {
    /// An engine with [`IMAGE`] built, or None (after printing why) when the
    /// docker CLI is missing or dockerd cannot start here.
    pub fn start() -> Option<Engine> {
        let lock = lock_file();
        let Some(docker) = which("docker") else {
            return skip("no `docker` command (Debian: apt-get install docker.io)");
        };
        let mut engine = if info_answers(None) {
            Engine {
                host: None,
                daemon: None,
                root: None,
                made_bridge: false,
                _lock: lock,
            }
        } else {
            match start_dockerd(lock) {
                Ok(e) => e,
                Err(why) => return skip(&format!("dockerd cannot start here: {why}")),
            }
        };
        if engine.host.is_none() && engine.container_exists() {
            return skip(&format!(
                "the machine's engine already has a container {CONTAINER}, not this test's"
            ));
        }
        let started = Instant::now();
        engine.build_image(&docker);
        eprintln!("built {IMAGE} in {:.1?}", started.elapsed());
        engine.daemon_check();
        Some(engine)
    }

    /// Sets DOCKER_HOST on `c` when the engine is ours.
    pub fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        if let Some(h) = &self.host {
            c.env("DOCKER_HOST", h);
        }
        c
    }

    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        self.env(&mut c);
        c
    }

    pub fn container_exists(&self) -> bool {
        self.docker()
            .args(["inspect", CONTAINER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn daemon_check(&mut self) {
        if let Some(d) = &mut self.daemon {
            assert!(
                d.try_wait().expect("dockerd status").is_none(),
                "our dockerd exited; its log: {}",
                self.log()
            );
        }
    }

    /// Our dockerd's log (empty for the machine's engine).
    pub fn log(&self) -> String {
        self.root
            .as_ref()
            .and_then(|r| std::fs::read_to_string(r.path().join("dockerd.log")).ok())
            .unwrap_or_default()
    }

    fn build_image(&self, docker: &Path) {
        let ctx = tempfile::tempdir().expect("image context");
        image_tree(ctx.path());
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(ctx.path())
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let mut import = Command::new(docker);
        self.env(&mut import);
        let import = import
            .args([
                "import",
                "--change",
                "USER 1883:1883",
                "--change",
                "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                r#"CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]"#,
                "-",
                IMAGE,
            ])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker import");
        let o = crate::common::wait_output(import, Duration::from_secs(60), "docker import");
        assert!(tar.wait().expect("tar").success(), "tar failed");
        assert!(
            o.status.success(),
            "docker import {IMAGE}: {}",
            crate::common::stderr(&o)
        );
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let Some(mut d) = self.daemon.take() else {
            return;
        };
        let _ = self
            .docker()
            .args(["rm", "-f", CONTAINER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let pid = nix::unistd::Pid::from_raw(d.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while d.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = d.kill();
                let _ = d.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.made_bridge {
            let _ = Command::new("ip")
                .args(["link", "delete", "docker0"])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Docker tests run one at a time (across test processes): they share
/// the container name and, with our own dockerd, the docker0 bridge.
fn lock_file() -> std::fs::File {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("docker test lock file");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let locked = nix::fcntl::Flock::lock(
            file.try_clone().expect("lock fd"),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        );
        match locked {
            // The lock lives as long as this descriptor (and its clones): keep it open.
            Ok(l) => {
                std::mem::forget(l);
                return file;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err((_, e)) => panic!("{}: still locked after 300 s ({e})", path.display()),
        }
    }
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn info_answers(host: Option<&str>) -> bool {
    let mut c = Command::new("docker");
    c.args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(h) = host {
        c.env("DOCKER_HOST", h);
    }
    let Ok(child) = c.spawn() else { return false };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut child = child;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// dockerd with everything under one temp dir, answering within 30 s.
fn start_dockerd(lock: std::fs::File) -> Result<Engine, String> {
    let Some(dockerd) = which("dockerd") else {
        return Err("no `dockerd` (Debian: apt-get install docker.io)".into());
    };
    let no_bridge_before = !Path::new("/sys/class/net/docker0").exists();
    // Short: the socket path must fit in sockaddr_un (108 bytes).
    let root = tempfile::Builder::new()
        .prefix("dockerd.")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .map_err(|e| format!("temp dir: {e}"))?;
    let r = root.path();
    let host = format!("unix://{}", r.join("docker.sock").display());
    let log = std::fs::File::create(r.join("dockerd.log")).map_err(|e| e.to_string())?;
    let daemon = Command::new(dockerd)
        .arg("--data-root")
        .arg(r.join("data"))
        .arg("--exec-root")
        .arg(r.join("exec"))
        .arg("--pidfile")
        .arg(r.join("dockerd.pid"))
        .args(["--host", &host, "--iptables=false"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawning dockerd: {e}"))?;
    let mut engine = Engine {
        host: Some(host.clone()),
        daemon: Some(daemon),
        root: Some(root),
        made_bridge: no_bridge_before,
        _lock: lock,
    };
    let started = Instant::now();
    while !info_answers(Some(&host)) {
        let exited = engine
            .daemon
            .as_mut()
            .and_then(|d| d.try_wait().ok().flatten());
        if exited.is_some() || started.elapsed() > Duration::from_secs(30) {
            let log = engine.log();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            return Err(format!(
                "no answer on {host} ({}); last log lines: {}",
                exited.map_or("timeout".to_string(), |s| s.to_string()),
                tail.join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("started dockerd on {host} in {:.1?}", started.elapsed());
    Ok(engine)
}

/// The image's file tree in `ctx`: mosquitto, its libraries, users, paths.
fn image_tree(ctx: &Path) {
    let bin = Path::new("/usr/sbin/mosquitto");
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    assert!(ldd.status.success(), "ldd {}", bin.display());
    let mut files = vec![bin.to_path_buf()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap_or("").trim();
        if let Some(p) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            files.push(PathBuf::from(p));
        }
    }
    for f in &files {
        let dest = ctx.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // Copies the target of a symlink (the loader and libraries often are).
        std::fs::copy(f, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", f.display()));
    }
    for d in ["etc", "mosquitto/config", "mosquitto/data", "mosquitto/log"] {
        std::fs::create_dir_all(ctx.join(d)).unwrap();
    }
    std::fs::write(
        ctx.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nmosquitto:x:1883:1883:mosquitto:/mosquitto:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(ctx.join("etc/group"), "root:x:0:\nmosquitto:x:1883:\n").unwrap();
    // As in eclipse-mosquitto, the paths are the broker's (only root can chown;
    // otherwise they stay the caller's: `broker up` mounts its own dirs over them).
    let _ = Command::new("chown")
        .args(["-R", "1883:1883"])
        .arg(ctx.join("mosquitto"))
        .status();
}
