//! Connection profiles: `OUT/profiles/NAME.toml`, written by `pki init`,
//! `broker up` and `iot create-thing`, read by every networked command.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Transport;
use crate::fsutil::{write_atomic, MODE_PUBLIC};

/// The profile `pki init` and `broker up` write.
pub const LOCAL_PROFILE: &str = "local";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub transport: Transport,
    /// CA certificate(s) that sign the broker's certificate (none: the OS trust store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cafile: Option<PathBuf>,
    /// User name for a password broker (the password is never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A fixed client identity (AWS IoT things use this)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// ...or a directory of identities `NAME.crt`/`NAME.key`, picked by role:
    /// a device uses its device id, the server side `server_identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_identity: Option<String>,
    /// The device that device-side commands act as when `--device-id` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// AWS region, for `--transport wss` SigV4 signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

pub fn profiles_dir(out: &Path) -> PathBuf {
    out.join("profiles")
}

pub fn profile_path(out: &Path, name: &str) -> PathBuf {
    profiles_dir(out).join(format!("{name}.toml"))
}

impl Profile {
    pub fn load(out: &Path, name: &str) -> Result<Self> {
        let path = profile_path(out, name);
        if !path.exists() {
            let known = list(out).unwrap_or_default();
            let hint = if known.is_empty() {
                "create one with `mqttkit pki init` and `mqttkit broker up`".to_string()
            } else {
                format!("known profiles: {}", known.join(", "))
            };
            anyhow::bail!(
                "--profile {name}: no profile file {}; {hint}",
                path.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{}: not a valid profile: {}", path.display(), e.message())
        })
    }

    pub fn save(&self, out: &Path, name: &str) -> Result<PathBuf> {
        let path = profile_path(out, name);
        let text = format!(
            "# mqttkit connection profile '{name}'; used by --profile {name}\n{}",
            toml::to_string_pretty(self)?
        );
        write_atomic(&path, text.as_bytes(), MODE_PUBLIC)?;
        Ok(path)
    }
}

/// Names of the profiles under `out`.
pub fn list(out: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let dir = profiles_dir(out);
    if !dir.is_dir() {
        return Ok(names);
    }
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|e| e == "toml") {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Absolute form of a path, so profiles work from any directory.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Writes (or updates the port of) the `local` profile for the broker in `out`.
/// Writes the `local` profile (localhost:8883) unless one exists.
pub fn ensure_local(out: &Path) -> Result<()> {
    if !profile_path(out, LOCAL_PROFILE).exists() {
        write_local(out, "localhost", 8883)?;
    }
    Ok(())
}

pub fn write_local(out: &Path, host: &str, port: u16) -> Result<PathBuf> {
    let certs = absolute(&crate::identity::certs_dir(out));
    let profile = Profile {
        host: host.to_string(),
        port,
        transport: Transport::Tls,
        cafile: Some(certs.join("ca.crt")),
        certs_dir: Some(certs),
        server_identity: Some(crate::identity::DEFAULT_SERVER.to_string()),
        device_id: Some(crate::identity::DEFAULT_DEVICE.to_string()),
        ..Profile::default()
    };
    profile.save(out, LOCAL_PROFILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_local(dir.path(), "localhost", 18883).unwrap();
        assert!(p.ends_with("profiles/local.toml"));
        let loaded = Profile::load(dir.path(), "local").unwrap();
        assert_eq!(loaded.port, 18883);
        assert_eq!(loaded.server_identity.as_deref(), Some("server"));
        let err = Profile::load(dir.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("known profiles: local"), "{err}");
        std::fs::write(profile_path(dir.path(), "bad"), "host = 1").unwrap();
        let err = Profile::load(dir.path(), "bad").unwrap_err().to_string();
        assert!(err.contains("bad.toml: not a valid profile"), "{err}");
    }
}
