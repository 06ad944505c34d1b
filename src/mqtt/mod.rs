//! The one connection layer used by `pub`, `sub`, `bench`, `doctor` and the
//! broker health check: flags and profiles resolved into an [`Endpoint`],
//! then rumqttc options over rustls.

pub mod failure;
pub mod poller;
pub mod probe;
pub mod profile;
pub mod sigv4;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::identity;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rumqttc::{MqttOptions, TlsConfiguration};
use serde::{Deserialize, Serialize};

pub use profile::Profile;

/// Topic a device publishes its telemetry to.
pub fn telemetry_topic(device_id: &str) -> String {
    format!("devices/{device_id}/telemetry")
}

/// Topic a device receives its commands on.
pub fn command_topic(device_id: &str) -> String {
    format!("devices/{device_id}/commands")
}

pub const ALL_TELEMETRY: &str = "devices/+/telemetry";

/// The device id in `devices/ID/...`.
pub fn device_of_topic(topic: &str) -> Option<&str> {
    let mut parts = topic.split('/');
    match (parts.next(), parts.next()) {
        (Some("devices"), Some(id)) => Some(id),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TLS (port 8883).
    #[default]
    Tls,
    /// MQTT over TLS on 443 offering ALPN `x-amzn-mqtt-ca` (AWS IoT Core).
    Alpn,
    /// MQTT over TLS WebSocket (`wss://HOST:PORT/mqtt`).
    Wss,
}

/// Connection options shared by every networked command.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Read connection settings from OUT/profiles/NAME.toml; flags override them.
    #[arg(long, value_name = "NAME", env = "MQTTKIT_PROFILE")]
    pub profile: Option<String>,
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
    /// Broker host name or IP address.
    #[arg(long, short = 'H')]
    pub host: Option<String>,
    /// Broker port.
    #[arg(long, short = 'p')]
    pub port: Option<u16>,
    /// CA certificate(s) that sign the broker's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM, or PKCS#8 DER).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// MQTT client id.
    #[arg(long, short = 'i')]
    pub client_id: Option<String>,
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
    /// Keep-alive interval: 30s, 1m (a bare number is seconds; at least 5s).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub keepalive: Duration,
}

/// The keep-alive a connection uses unless told otherwise.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// Where and how to connect, before the profile is read: the library's
/// form of the connection flags. The CLI builds it from [`ConnectionArgs`]
/// (`spec()`); `broker`, `quickstart` and `doctor` build it themselves.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    /// Output root holding certs/ and profiles/.
    pub out: PathBuf,
    /// Profile to read; `None` reads `local` when it exists.
    pub profile: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub cafile: Option<PathBuf>,
    /// Client certificate and key, overriding the profile's identity.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub client_id: Option<String>,
    pub transport: Option<Transport>,
    pub keepalive: Duration,
}

impl ConnectSpec {
    /// The `local` profile of an output root (written by `pki init`/`broker up`).
    pub fn local(out: &Path) -> Self {
        ConnectSpec {
            profile: Some(profile::LOCAL_PROFILE.into()),
            ..Self::bare(out)
        }
    }

    /// Nothing set: the `local` profile if it exists, else defaults.
    pub fn bare(out: &Path) -> Self {
        ConnectSpec {
            out: out.to_path_buf(),
            profile: None,
            host: None,
            port: None,
            cafile: None,
            identity: None,
            client_id: None,
            transport: None,
            keepalive: DEFAULT_KEEPALIVE,
        }
    }
}

impl ConnectionArgs {
    /// The one conversion from the flags to the library's configuration.
    pub fn spec(&self) -> ConnectSpec {
        ConnectSpec {
            out: self.out.clone(),
            profile: self.profile.clone(),
            host: self.host.clone(),
            port: self.port,
            cafile: self.cafile.clone(),
            identity: self.cert.clone().zip(self.key.clone()),
            client_id: self.client_id.clone(),
            transport: self.transport,
            keepalive: self.keepalive,
        }
    }
}

/// Which identity a command acts as when the profile holds several.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    Device(&'a str),
    Server,
}

/// A fully resolved place to connect to, with its TLS configuration.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    pub cafile: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Client id from the flags or profile; commands choose one otherwise.
    pub client_id: Option<String>,
    pub tls: Arc<rustls::ClientConfig>,
    pub keepalive: Duration,
    pub region: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("identity", &self.identity)
            .finish()
    }
}

impl ConnectSpec {
    pub fn load_profile(&self) -> Result<Option<Profile>> {
        match &self.profile {
            Some(name) => Ok(Some(Profile::load(&self.out, name)?)),
            None => {
                // The `local` profile (if any) is the default; flags override its fields.
                let local = profile::profile_path(&self.out, profile::LOCAL_PROFILE);
                if local.exists() {
                    Ok(Some(Profile::load(&self.out, profile::LOCAL_PROFILE)?))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The device id a device-side command acts as: the flag, else the profile's.
    pub fn default_device(&self) -> Result<Option<String>> {
        Ok(self.load_profile()?.and_then(|p| p.device_id))
    }

    pub fn resolve(&self, role: Role<'_>) -> Result<Endpoint> {
        let profile = self.load_profile()?;
        let p = profile.as_ref();
        let host = self
            .host
            .clone()
            .or_else(|| p.map(|p| p.host.clone()))
            .unwrap_or_else(|| "localhost".to_string());
        let transport = self
            .transport
            .or_else(|| p.map(|p| p.transport))
            .unwrap_or_default();
        let default_port = match transport {
            Transport::Tls => 8883,
            Transport::Alpn | Transport::Wss => 443,
        };
        // The profile's port belongs to the profile's transport: `--transport alpn`
        // on an 8883 profile means 443.
        let port = self.port.unwrap_or(match p {
            Some(p) if p.transport == transport => p.port,
            _ => default_port,
        });
        let cafile = match self.cafile.clone().or_else(|| p.map(|p| p.cafile.clone())) {
            Some(c) => c,
            None => bail!(
                "no CA certificate: pass --cafile FILE or --profile NAME (run `mqttkit pki init` and `mqttkit broker up` to create the `local` profile)"
            ),
        };
        let identity = self
            .identity
            .clone()
            .or_else(|| p.and_then(|p| identity_from_profile(p, role)));
        if let Some((cert, _)) = &identity {
            if !cert.exists() {
                let who = match role {
                    Role::Device(d) => format!("device '{d}'"),
                    Role::Server => "the server identity".to_string(),
                };
                bail!(
                    "no certificate for {who}: {} does not exist; issue one with `mqttkit pki issue NAME` or pass --cert/--key",
                    cert.display()
                );
            }
        }
        if let (Role::Device(device), Some((cert, _))) = (role, &identity) {
            check_identity_matches_device(cert, device)?;
        }
        let client_id = self
            .client_id
            .clone()
            .or_else(|| p.and_then(|p| p.client_id.clone()));
        let alpn = (transport == Transport::Alpn).then_some(tls::AWS_IOT_ALPN);
        let tls = tls::client_config(
            &cafile,
            identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            alpn,
        )?;
        Ok(Endpoint {
            host,
            port,
            transport,
            cafile,
            identity,
            client_id,
            tls,
            keepalive: self.keepalive.max(Duration::from_secs(5)),
            region: p.and_then(|p| p.region.clone()),
        })
    }
}

/// Mosquitto's ACLs key on the certificate CN and silently drop what a device
/// publishes under another device's topic (MQTT 3.1.1 has no error for it), so
/// a certificate for device A used as device B is refused up front. CNs that
/// are not identities (AWS IoT's "AWS IoT Certificate") are not checked.
fn check_identity_matches_device(cert: &Path, device: &str) -> Result<()> {
    // Unreadable files are reported by the TLS setup.
    match identity::common_name_of_file(cert) {
        Some(cn) if cn != device && identity::validate_identity(&cn).is_ok() => bail!(
            "--device-id {device}: the certificate {} is device '{cn}', and the broker lets it act only as '{cn}'; use --device-id {cn}, or `mqttkit pki issue {device}` for a certificate of its own",
            cert.display()
        ),
        _ => Ok(()),
    }
}

fn identity_from_profile(p: &Profile, role: Role<'_>) -> Option<(PathBuf, PathBuf)> {
    if let (Some(c), Some(k)) = (&p.cert, &p.key) {
        return Some((c.clone(), k.clone()));
    }
    let dir = p.certs_dir.as_ref()?;
    let name = match role {
        Role::Device(d) => d.to_string(),
        Role::Server => p
            .server_identity
            .clone()
            .unwrap_or_else(|| identity::DEFAULT_SERVER.to_string()),
    };
    Some(identity_in(dir, &name))
}

pub use identity::files as identity_in;

impl Endpoint {
    /// rumqttc options for this endpoint (MQTT 3.1.1).
    pub fn mqtt_options(&self, client_id: &str) -> MqttOptions {
        let tls = TlsConfiguration::Rustls(self.tls.clone());
        let mut opts = match self.transport {
            Transport::Tls | Transport::Alpn => {
                let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
                o.set_transport(rumqttc::Transport::tls_with_config(tls));
                o
            }
            Transport::Wss => {
                // Port 443 stays out of the URL so the Host header (which SigV4 signs) is the bare host.
                let url = match self.port {
                    443 => format!("wss://{}/mqtt", self.host_for_url()),
                    port => format!("wss://{}:{port}/mqtt", self.host_for_url()),
                };
                let mut o = MqttOptions::new(client_id, url, self.port);
                o.set_transport(rumqttc::Transport::wss_with_config(tls));
                // AWS IoT: presign each (re)connect with fresh credentials from aws-config.
                if let Some(region) = self.sigv4_region() {
                    o.set_request_modifier(move |req| sigv4::sign_request(req, region.clone()));
                }
                o
            }
        };
        opts.set_keep_alive(self.keepalive);
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        opts
    }

    /// The same place, connecting as another identity (files in PEM).
    pub fn with_identity(mut self, cert: &Path, key: &Path) -> Result<Self> {
        let alpn = (self.transport == Transport::Alpn).then_some(tls::AWS_IOT_ALPN);
        self.tls = tls::client_config(&self.cafile, Some((cert, key)), alpn)?;
        self.identity = Some((cert.to_path_buf(), key.to_path_buf()));
        Ok(self)
    }

    /// The same place, verifying the broker's certificate for `name`
    /// instead of the host connected to (an address the certificate lacks).
    pub fn verifying_name(mut self, name: &str) -> Result<Self> {
        if let Some((cert, key)) = &self.identity {
            self.tls = tls::client_config_for_name(&self.cafile, (cert, key), name)?;
        }
        Ok(self)
    }

    /// The region to SigV4-sign a WebSocket connection for: the profile's, or
    /// the one in an AWS IoT endpoint name. None for other brokers.
    fn sigv4_region(&self) -> Option<String> {
        self.region
            .clone()
            .or_else(|| sigv4::region_of_endpoint(&self.host).map(str::to_string))
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    pub fn describe(&self) -> String {
        let scheme = match self.transport {
            Transport::Tls => "mqtts",
            Transport::Alpn => "mqtts+alpn",
            Transport::Wss => "wss",
        };
        format!("{scheme}://{}:{}", self.host_for_url(), self.port)
    }
}

/// A fresh, unique client id with a readable prefix.
pub fn unique_client_id(prefix: &str) -> String {
    let n: u32 = rand::random();
    format!("{prefix}-{n:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(telemetry_topic("d1"), "devices/d1/telemetry");
        assert_eq!(command_topic("d1"), "devices/d1/commands");
        assert_eq!(device_of_topic("devices/d1/telemetry"), Some("d1"));
        assert_eq!(device_of_topic("other/d1"), None);
    }
}
