//! The one connection layer used by `pub`, `sub`, `bench`, `doctor` and the
//! broker health check: flags and profiles resolved into an [`Endpoint`],
//! then rumqttc options over rustls.

pub mod address;
pub mod client_id;
pub mod failure;
pub mod poller;
pub mod probe;
pub mod profile;
pub mod reason;
pub mod session;
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

pub use address::Secret;
pub use profile::Profile;
pub use reason::Reason;
pub use session::{Ack, Client, ConnError, Event, EventLoop, Message, Options, Props, Protocol};

/// Topic a device publishes its telemetry to.
pub fn telemetry_topic(device_id: &str) -> String {
    format!("devices/{device_id}/telemetry")
}

/// Topic a device receives its commands on.
pub fn command_topic(device_id: &str) -> String {
    format!("devices/{device_id}/commands")
}

/// Where a device answers commands (MQTT 5 response topic).
pub fn reply_topic(device_id: &str) -> String {
    format!("devices/{device_id}/replies")
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
    /// Plain MQTT over TCP (port 1883): NOT encrypted; `mqtt://HOST` or --no-tls.
    Tcp,
}

impl Transport {
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 8883,
            Transport::Alpn | Transport::Wss => 443,
            Transport::Tcp => 1883,
        }
    }
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
    /// Broker host name or IP address, or a URL: mqtt://[USER@]HOST[:1883]
    /// (plain TCP), mqtts://HOST[:8883], wss://HOST[:443]/mqtt.
    #[arg(long, short = 'H', value_name = "HOST|URL")]
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
    /// MQTT protocol version. Without it: 5, and 3.1.1 when the broker
    /// refuses 5 (said on stderr).
    #[arg(
        long = "protocol-version",
        short = 'V',
        value_name = "5|311",
        value_enum
    )]
    pub protocol: Option<Protocol>,
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
    /// Plain MQTT over TCP (default port 1883): not encrypted, for local brokers.
    #[arg(long, conflicts_with_all = ["transport", "cafile", "cert"])]
    pub no_tls: bool,
    /// Keep-alive interval: 30s, 1m (a bare number is seconds; at least 5s).
    #[arg(long, short = 'k', value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub keepalive: Duration,
    /// User name, for a broker with a password file (profiles may store it).
    #[arg(long, short = 'u', value_name = "USER")]
    pub username: Option<String>,
    /// Password; other users see it in `ps`: prefer --password-stdin or the
    /// MQTTKIT_PASSWORD environment variable.
    #[arg(long, short = 'P', value_name = "PASS", value_parser = address::parse_secret)]
    pub password: Option<Secret>,
    /// Read the password from the first line of stdin.
    #[arg(long, conflicts_with = "password")]
    pub password_stdin: bool,
    /// Last will: the broker publishes --will-payload here when this client
    /// vanishes without a DISCONNECT.
    #[arg(long, value_name = "TOPIC", help_heading = "Last will")]
    pub will_topic: Option<String>,
    #[arg(
        long,
        value_name = "MESSAGE",
        requires = "will_topic",
        help_heading = "Last will"
    )]
    pub will_payload: Option<String>,
    #[arg(long, value_name = "0|1|2", default_value_t = 0, requires = "will_topic", value_parser = clap::value_parser!(u8).range(0..=2), help_heading = "Last will")]
    pub will_qos: u8,
    #[arg(long, requires = "will_topic", help_heading = "Last will")]
    pub will_retain: bool,
}

/// A last will: published by the broker when the client is lost.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// The environment variable a password is read from when no flag gives one.
pub const PASSWORD_ENV: &str = "MQTTKIT_PASSWORD";

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
    /// `None`: MQTT 5, falling back to 3.1.1 when the broker refuses 5.
    pub protocol: Option<Protocol>,
    pub transport: Option<Transport>,
    pub keepalive: Duration,
    /// Plain TCP (`--no-tls`), as `mqtt://` asks for it.
    pub plain: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub will: Option<Will>,
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
            protocol: None,
            transport: None,
            keepalive: DEFAULT_KEEPALIVE,
            plain: false,
            username: None,
            password: None,
            will: None,
        }
    }
}

impl ConnectionArgs {
    /// The one conversion from the flags to the library's configuration
    /// (reads the password from stdin once with --password-stdin).
    pub fn spec(&self) -> Result<ConnectSpec> {
        Ok(ConnectSpec {
            out: self.out.clone(),
            profile: self.profile.clone(),
            host: self.host.clone(),
            port: self.port,
            cafile: self.cafile.clone(),
            identity: self.cert.clone().zip(self.key.clone()),
            client_id: self.client_id.clone(),
            protocol: self.protocol,
            transport: self.transport,
            keepalive: self.keepalive,
            plain: self.no_tls,
            username: self.username.clone(),
            password: self.password()?,
            will: self.will_topic.as_ref().map(|topic| Will {
                topic: topic.clone(),
                payload: self.will_payload.clone().unwrap_or_default().into_bytes(),
                qos: self.will_qos,
                retain: self.will_retain,
            }),
        })
    }

    /// -P, else --password-stdin, else $MQTTKIT_PASSWORD.
    fn password(&self) -> Result<Option<Secret>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if self.password_stdin {
            return password_from_stdin().map(Some);
        }
        Ok(std::env::var(PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .map(Secret::new))
    }
}

/// The first line of stdin, read once per process (several specs may be built).
fn password_from_stdin() -> Result<Secret> {
    static READ: std::sync::OnceLock<Result<Secret, String>> = std::sync::OnceLock::new();
    let read = READ.get_or_init(|| {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("--password-stdin: cannot read stdin ({e})"))?;
        let pass = line.trim_end_matches(['\n', '\r']);
        if pass.is_empty() {
            return Err("--password-stdin: stdin held no password; pipe it in, e.g. `printf '%s\\n' \"$PASS\" | mqttkit ... --password-stdin`".into());
        }
        Ok(Secret::new(pass))
    });
    read.clone().map_err(|e| anyhow::anyhow!(e))
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
    /// `None`: the OS trust store.
    pub cafile: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Client id from the flags or profile; commands choose one otherwise.
    pub client_id: Option<String>,
    pub protocol: Protocol,
    /// Whether 3.1.1 may stand in when the broker refuses MQTT 5 (no -V).
    pub protocol_fallback: bool,
    pub tls: Arc<rustls::ClientConfig>,
    pub keepalive: Duration,
    pub region: Option<String>,
    /// User name and password for the CONNECT packet.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub will: Option<Will>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("protocol", &self.protocol)
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
        let (address, transport, port) = self.resolve_address(p)?;
        let plain = transport == Transport::Tcp;
        let cafile = self
            .cafile
            .clone()
            .or_else(|| p.and_then(|p| p.cafile.clone()));
        let identity = match plain {
            true => None,
            false => self.resolve_identity(p, role)?,
        };
        let client_id = self
            .client_id
            .clone()
            .or_else(|| p.and_then(|p| p.client_id.clone()));
        let tls = if plain {
            // Never used: no trust store to read for a plain connection.
            tls::plain_placeholder()
        } else {
            let alpn = (transport == Transport::Alpn).then_some(tls::AWS_IOT_ALPN);
            let pair = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            tls::client_config(cafile.as_deref(), pair, alpn)?
        };
        let username = (self.username.clone())
            .or(address.user)
            .or_else(|| p.and_then(|p| p.username.clone()));
        if self.password.is_some() && username.is_none() {
            bail!("--password: a password needs a user name; pass -u USER (or --host mqtt://USER@HOST)");
        }
        let endpoint = Endpoint {
            host: address.host,
            port,
            transport,
            cafile,
            identity,
            client_id,
            protocol: self.protocol.unwrap_or_default(),
            protocol_fallback: self.protocol.is_none(),
            tls,
            keepalive: self.keepalive.max(Duration::from_secs(5)),
            region: p.and_then(|p| p.region.clone()),
            username,
            password: self.password.clone(),
            will: self.will.clone(),
        };
        if plain {
            warn_plain_once(&endpoint);
        }
        Ok(endpoint)
    }

    /// Host, transport and port from the flags, a URL in either, the profile.
    fn resolve_address(&self, p: Option<&Profile>) -> Result<(address::Address, Transport, u16)> {
        let (what, text) = match (&self.host, p) {
            (Some(h), _) => ("--host", h.clone()),
            (None, Some(p)) => ("the profile's host", p.host.clone()),
            (None, None) => ("--host", "localhost".to_string()),
        };
        let address = address::parse(what, &text)?;
        let from_flags = self.plain.then_some(Transport::Tcp).or(self.transport);
        let transport = match (from_flags, address.transport) {
            (Some(t), Some(u)) if t != u && !(t == Transport::Alpn && u == Transport::Tls) => {
                bail!(
                "{what} {text}: the URL's scheme contradicts --transport/--no-tls; drop one of them"
            )
            }
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => p.map(|p| p.transport).unwrap_or_default(),
        };
        // The profile's port belongs to the profile's transport: `--transport alpn`
        // on an 8883 profile means 443.
        let profile_port = p.filter(|p| p.transport == transport);
        let port = (self.port)
            .or(address.port)
            .or(profile_port.map(|p| p.port))
            .unwrap_or(transport.default_port());
        Ok((address, transport, port))
    }

    fn resolve_identity(
        &self,
        p: Option<&Profile>,
        role: Role<'_>,
    ) -> Result<Option<(PathBuf, PathBuf)>> {
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
        Ok(identity)
    }
}

/// The one-line warning a plain connection gets (once per process).
fn warn_plain_once(endpoint: &Endpoint) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let what = if endpoint.password.is_some() {
        "the password and every message cross the network in clear"
    } else {
        "every message crosses the network in clear"
    };
    crate::note!(
        "warning: {} is plain MQTT over TCP, not encrypted: {what}",
        endpoint.describe()
    );
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
    /// rumqttc options for a 3.1.1 session.
    pub(crate) fn mqtt_options_for(&self, o: &Options) -> MqttOptions {
        let mut opts = MqttOptions::new(&o.client_id, self.broker_addr(), self.port);
        if let Some(t) = self.rumqttc_transport() {
            opts.set_transport(t);
        }
        if let Some(region) = self.wss_sigv4_region() {
            opts.set_request_modifier(move |req| sigv4::sign_request(req, region.clone()));
        }
        opts.set_keep_alive(self.keepalive);
        opts.set_max_packet_size(o.max_incoming, o.max_outgoing);
        opts.set_clean_session(!o.persistent);
        opts.set_manual_acks(o.manual_acks);
        if let Some(n) = o.inflight {
            opts.set_inflight(n);
        }
        if let Some(user) = &self.username {
            let password = self.password.as_ref().map_or("", Secret::expose);
            opts.set_credentials(user.clone(), password);
        }
        if let Some(w) = &self.will {
            let will = rumqttc::LastWill::new(&w.topic, w.payload.clone(), qos(w.qos), w.retain);
            opts.set_last_will(will);
        }
        opts
    }

    /// rumqttc options for an MQTT 5 session.
    pub(crate) fn mqtt5_options(&self, o: &Options) -> rumqttc::v5::MqttOptions {
        use rumqttc::v5::mqttbytes::{v5::LastWill, QoS as Q5};
        let mut opts = rumqttc::v5::MqttOptions::new(&o.client_id, self.broker_addr(), self.port);
        if let Some(t) = self.rumqttc_transport() {
            opts.set_transport(t);
        }
        if let Some(region) = self.wss_sigv4_region() {
            opts.set_request_modifier(move |req| sigv4::sign_request(req, region.clone()));
        }
        opts.set_keep_alive(self.keepalive);
        // Enforced here, not announced: a broker told our maximum drops a
        // larger message for us without a word; unannounced, it arrives and
        // is reported (as over 3.1.1).
        opts.set_default_max_incoming_size(o.max_incoming.min(u32::MAX as usize) as u32);
        opts.set_clean_start(!o.persistent);
        // 3.1.1's persistent session never expires; the same here.
        opts.set_session_expiry_interval(o.persistent.then_some(u32::MAX));
        opts.set_manual_acks(o.manual_acks);
        if let Some(n) = o.inflight {
            opts.set_outgoing_inflight_upper_limit(n);
        }
        opts.set_network_options(session::network_options(o));
        if let Some(t) = o.connect_timeout {
            opts.set_connection_timeout(t.as_secs().max(1));
        }
        if let Some(user) = &self.username {
            let password = self.password.as_ref().map_or("", Secret::expose);
            opts.set_credentials(user.clone(), password);
        }
        if let Some(w) = &self.will {
            let q = [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce][w.qos.min(2) as usize];
            opts.set_last_will(LastWill::new(
                &w.topic,
                w.payload.clone(),
                q,
                w.retain,
                None,
            ));
        }
        opts
    }

    /// The transport for either protocol's options; `None`: rumqttc's
    /// default, plain TCP.
    fn rumqttc_transport(&self) -> Option<rumqttc::Transport> {
        let tls = TlsConfiguration::Rustls(self.tls.clone());
        match self.transport {
            Transport::Tcp => None,
            Transport::Tls | Transport::Alpn => Some(rumqttc::Transport::tls_with_config(tls)),
            Transport::Wss => Some(rumqttc::Transport::wss_with_config(tls)),
        }
    }

    /// AWS IoT over WebSockets: presign each (re)connect for this region
    /// with fresh credentials from aws-config.
    fn wss_sigv4_region(&self) -> Option<String> {
        (self.transport == Transport::Wss)
            .then(|| self.sigv4_region())
            .flatten()
    }

    /// The host, or for WebSockets the URL (port 443 stays out of it so the
    /// Host header, which SigV4 signs, is the bare host).
    fn broker_addr(&self) -> String {
        match (self.transport, self.port) {
            (Transport::Wss, 443) => format!("wss://{}/mqtt", self.host_for_url()),
            (Transport::Wss, port) => format!("wss://{}:{port}/mqtt", self.host_for_url()),
            _ => self.host.clone(),
        }
    }

    /// The same place, connecting as another identity (files in PEM).
    pub fn with_identity(mut self, cert: &Path, key: &Path) -> Result<Self> {
        let alpn = (self.transport == Transport::Alpn).then_some(tls::AWS_IOT_ALPN);
        self.tls = tls::client_config(self.cafile.as_deref(), Some((cert, key)), alpn)?;
        self.identity = Some((cert.to_path_buf(), key.to_path_buf()));
        Ok(self)
    }

    /// The same place, verifying the broker's certificate for `name`
    /// instead of the host connected to (an address the certificate lacks).
    pub fn verifying_name(mut self, name: &str) -> Result<Self> {
        if let Some((cert, key)) = &self.identity {
            self.tls = tls::client_config_for_name(self.cafile.as_deref(), (cert, key), name)?;
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
            Transport::Tcp => "mqtt",
        };
        format!("{scheme}://{}:{}", self.host_for_url(), self.port)
    }

    /// Who this connection acts as, named only when an error needs it.
    pub fn who(&self) -> Who {
        Who {
            username: self.username.clone(),
            cert: self.identity.as_ref().map(|(cert, _)| cert.clone()),
        }
    }
}

/// Who a connection acts as: its MQTT user name or client certificate.
/// Displayed (the certificate read for its CN) only in an error.
#[derive(Debug, Clone)]
pub struct Who {
    username: Option<String>,
    cert: Option<PathBuf>,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.username, &self.cert) {
            (Some(user), _) => write!(f, "user '{user}'"),
            (None, Some(cert)) => match identity::common_name_of_file(cert) {
                Some(cn) => write!(f, "identity '{cn}'"),
                None => write!(f, "the identity of {}", cert.display()),
            },
            (None, None) => f.write_str("an anonymous client"),
        }
    }
}

/// QoS from its number on the command line (0, 1 or 2).
pub fn qos(level: u8) -> rumqttc::QoS {
    match level {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// The trust roots in words: the --cafile, or the OS store.
pub fn describe_roots(cafile: Option<&Path>) -> String {
    match cafile {
        Some(c) => c.display().to_string(),
        None => "the OS trust store".to_string(),
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

    /// A profile holds a user name and the transport (never a password); a
    /// URL in it or in --host says the transport, the port follows it.
    #[test]
    fn profiles_and_urls_resolve_to_plain_or_tls() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile {
            host: "mqtt://alice@127.0.0.1".into(),
            port: 1884,
            transport: Transport::Tcp,
            username: Some("bob".into()),
            ..Profile::default()
        };
        profile.save(dir.path(), "plain").unwrap();
        let spec = ConnectSpec {
            profile: Some("plain".into()),
            password: Some(Secret::new("pw")),
            ..ConnectSpec::bare(dir.path())
        };
        let e = spec.resolve(Role::Server).unwrap();
        assert_eq!((e.transport, e.port), (Transport::Tcp, 1884));
        // The URL's user name wins over the profile's.
        assert_eq!(e.username.as_deref(), Some("alice"));
        assert_eq!(e.describe(), "mqtt://127.0.0.1:1884");
        let tls = ConnectSpec {
            host: Some("mqtt://h".into()),
            transport: Some(Transport::Wss),
            ..spec.clone()
        };
        let err = tls.resolve(Role::Server).unwrap_err().to_string();
        assert!(err.contains("contradicts --transport"), "{err}");
        let alone = ConnectSpec {
            host: Some("mqtt://h:1".into()),
            password: Some(Secret::new("pw")),
            ..ConnectSpec::bare(dir.path())
        };
        let err = alone.resolve(Role::Server).unwrap_err().to_string();
        assert!(
            err.starts_with("--password: a password needs a user name"),
            "{err}"
        );
        assert!(!format!("{:?}", spec).contains("pw\""));
    }
}
